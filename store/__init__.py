"""lvmd's SQLite layer: schema, batched writer, readers, command queue.

Imports only the standard library and sqlite_utils (never torch, never textual), so the TUI
and post-run tools stay light. All SQL of the project lives in this package.
"""
from store.db import connect, open_db

__all__ = ["connect", "open_db"]
