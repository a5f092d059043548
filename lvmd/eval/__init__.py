"""Evaluation: 5CAT, the trainer's evaluator, legacy checkpoints, predict, the post-run
verdict and the data report. Never import this package as `eval` (it would hide the builtin)."""
