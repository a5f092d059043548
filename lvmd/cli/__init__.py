"""The `lvmd` command: one module per command family, each with `register(subparsers)`."""
