"""lvmd: train latent-vector models with the P6b guardrails; telemetry and 5CAT go to SQLite."""
__version__ = "0.1.0"
