"""The TUI's widgets; canvas.py holds the braille drawing they share."""
