"""Training: the trainer (read it top to bottom), models, losses and guardrails, atomic
checkpoints, the collapse watch, and the ports the trainer talks through (sink, control)."""
