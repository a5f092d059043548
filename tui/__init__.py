"""lvmd's terminal UI (Textual): watch runs live and send them commands.

Importing this package loads nothing heavy (no textual, never torch): `tui.launch` parses the
command line and imports the app only when it runs.
"""
