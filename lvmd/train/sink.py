"""Where the trainer's side effects go (DESIGN: the trainer writes no SQL).

Sink protocol: log_steps(rows), event(kind, step=, epoch=, detail=), epoch(row),
update_run(**fields), write_eval(eval_row, gates, metrics) -> id, flush(), close().
store.writer.SqliteSink implements it on SQLite; NullSink and ListSink serve benchmarks and tests.
"""
from __future__ import annotations

from typing import Any, Protocol, Sequence


class Sink(Protocol):
    def log_steps(self, rows: Sequence[Sequence[Any]]) -> None: ...
    def event(self, kind: str, *, step: int | None = None, epoch: int | None = None,
              detail: dict | None = None) -> None: ...
    def epoch(self, row: dict) -> None: ...
    def update_run(self, **fields: Any) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


class NullSink:
    def log_steps(self, rows): pass
    def event(self, kind, *, step=None, epoch=None, detail=None): pass
    def epoch(self, row): pass
    def update_run(self, **fields): pass
    def write_eval(self, eval_row, gates, metrics): return 0
    def flush(self): pass
    def close(self): pass


class ListSink:
    """Keeps everything in lists (tests)."""

    def __init__(self):
        self.steps: list[tuple] = []
        self.events: list[dict] = []
        self.epochs: list[dict] = []
        self.run_updates: list[dict] = []
        self.evals: list[tuple] = []

    def log_steps(self, rows): self.steps.extend(tuple(r) for r in rows)
    def event(self, kind, *, step=None, epoch=None, detail=None):
        self.events.append({"kind": kind, "step": step, "epoch": epoch, "detail": detail})
    def epoch(self, row): self.epochs.append(dict(row))
    def update_run(self, **fields): self.run_updates.append(fields)
    def write_eval(self, eval_row, gates, metrics):
        self.evals.append((eval_row, gates, metrics))
        return len(self.evals)
    def flush(self): pass
    def close(self): pass
