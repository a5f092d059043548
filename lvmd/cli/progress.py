"""Progress on stderr for the long CLI verbs (data report, eval): a rich bar on a terminal, one
line per stage elsewhere (a log file), never on stdout (which holds the result)."""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Callable, Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


@contextmanager
def stages(title: str, *, enabled: bool = True) -> Iterator[Callable[[int, int, str], None]]:
    """A progress(done, total, stage) callback for the body of the with-block."""
    console = Console(file=sys.stderr)
    if not enabled:
        yield lambda done, total, stage: None
        return
    if not console.is_terminal:
        def line(done: int, total: int, stage: str) -> None:
            print(f"{title}: {done}/{total} {stage}", file=sys.stderr, flush=True)
        yield line
        return
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[stage]}"), TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task(title, total=None, stage="starting")

        def update(done: int, total: int, stage: str) -> None:
            bar.update(task, completed=done, total=total, stage=stage)
        yield update
