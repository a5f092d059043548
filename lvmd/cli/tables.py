"""CLI tables through rich: columns sized to their widest cell (wide characters and combining
marks measured right), never cut when the output is piped."""
from __future__ import annotations

import sys
from typing import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text


def table(headers: Sequence[str], rows: Sequence[Sequence[str | Text]], *, left_columns: int = 1) -> Table:
    """The first `left_columns` columns left-aligned (labels), the rest right-aligned (numbers)."""
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1), header_style="bold")
    for i, header in enumerate(headers):
        t.add_column(header, justify="left" if i < left_columns else "right", no_wrap=True)
    for row in rows:
        t.add_row(*row)
    return t


def render(renderable, *, file=None) -> str:
    """The renderable as text: coloured on a terminal, plain (and at full width) in a pipe."""
    file = file or sys.stdout
    console = Console(file=file, highlight=False, soft_wrap=False)
    if not console.is_terminal:  # a pipe or a file: the table's natural width, no colour codes
        natural = Console(width=100_000).measure(renderable).maximum
        console = Console(file=file, highlight=False, width=max(natural, 20), color_system=None)
    with console.capture() as cap:
        console.print(renderable)
    return cap.get().rstrip("\n")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str | Text]], *, left_columns: int = 1) -> None:
    print(render(table(headers, rows, left_columns=left_columns)))
