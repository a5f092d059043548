"""A run's life: the daemon (pidfile under flock, signals → flags, states, heartbeat) and the
runner (create / execute / finish)."""
