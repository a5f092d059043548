"""step_blocks: the steps table summed per run, epoch and block of 64 steps (migration 9).

Why: the post-run views and `lvmd report` answered every question (steps, skips, max ρ, per-epoch
means, the binned charts) by reading every step row of the run, a dozen times per report: a
10-minute tiny run is 240,000 rows, and a few `lvmd report` loops beside a training took a whole
core from it (issue 13 K). Sums, counts, minima and maxima of 64 steps answer the same questions
from 1/64 of the rows.

Triggers keep the blocks exact whoever writes `steps` (the writer, a resume's truncation, a hand
edit): an insert adds its row to its block (an UPSERT, in step order, so a block's sums are the
same additions SUM() over its rows makes); a delete or an update re-sums the block from its at
most 64 rows. Nothing in lvmd writes step_blocks itself.

Migrations never change once shipped: the columns summed are frozen here, not read from
STEP_METRICS (a metric added later gets its own migration if it needs summing).
"""
from __future__ import annotations

import sqlite3

BLOCK_STEPS = 64
# Every per-step metric as of migration 9 (schema.STEP_METRICS then): sum_<name> per block.
SUMMED: tuple[str, ...] = (
    "lam", "rho", "rho_pre", "frac", "m_gap", "pos", "neg", "gap", "ratio", "neg_cos_rate", "skip",
    "attenuate", "mse", "l_dir", "l_floor", "l_norm", "l_orth", "total", "grad_norm",
)
# name -> (aggregate over a block's rows, how an inserted row adds to it)
_EXTREMES = {"pos_min": ("MIN(pos)", "min(pos_min, excluded.pos_min)"),
             "rho_max": ("MAX(rho)", "max(rho_max, excluded.rho_max)"),
             "rho_pre_max": ("MAX(rho_pre)", "max(rho_pre_max, excluded.rho_pre_max)")}


def _block_of(step: str) -> str:
    return f"({step} / {BLOCK_STEPS})"


_COLUMNS = ("run_id", "epoch", "block", "steps", "first_step", "last_step", "pos_negative",
            *_EXTREMES, *(f"sum_{m}" for m in SUMMED))
# a block's row (in _COLUMNS order) from the rows of `steps` grouped into that block
_AGGREGATES = ", ".join(["run_id", "epoch", _block_of("step"), "COUNT(*)", "MIN(step)", "MAX(step)",
                         "TOTAL(pos < 0)", *(agg for agg, _ in _EXTREMES.values()), *(f"SUM({m})" for m in SUMMED)])


def _resum(row: str) -> str:
    """Statements that rebuild the block of `row` (OLD or NEW) from its rows in `steps`."""
    where = (f"run_id = {row}.run_id AND epoch = {row}.epoch AND step BETWEEN {_block_of(f'{row}.step')} * "
             f"{BLOCK_STEPS} AND {_block_of(f'{row}.step')} * {BLOCK_STEPS} + {BLOCK_STEPS - 1}")
    return (f"DELETE FROM step_blocks WHERE run_id = {row}.run_id AND epoch = {row}.epoch"
            f" AND block = {_block_of(f'{row}.step')};\n"
            f"    INSERT INTO step_blocks ({', '.join(_COLUMNS)})"
            f" SELECT {_AGGREGATES} FROM steps WHERE {where} GROUP BY run_id, epoch;")


def _add_new_row() -> str:
    values = ", ".join(["NEW.run_id", "NEW.epoch", _block_of("NEW.step"), "1", "NEW.step", "NEW.step",
                        "NEW.pos < 0", "NEW.pos", "NEW.rho", "NEW.rho_pre", *(f"NEW.{m}" for m in SUMMED)])
    updates = ", ".join(["steps = steps + 1", "first_step = min(first_step, excluded.first_step)",
                         "last_step = max(last_step, excluded.last_step)",
                         "pos_negative = pos_negative + excluded.pos_negative",
                         *(f"{name} = {add}" for name, (_, add) in _EXTREMES.items()),
                         *(f"sum_{m} = sum_{m} + excluded.sum_{m}" for m in SUMMED)])
    return (f"INSERT INTO step_blocks ({', '.join(_COLUMNS)}) VALUES ({values})"
            f" ON CONFLICT (run_id, epoch, block) DO UPDATE SET {updates};")


def create_step_blocks(conn: sqlite3.Connection) -> None:
    """The table, filled from the steps already there, and the triggers that keep it so."""
    sums = ", ".join(f"sum_{m} REAL NOT NULL" for m in SUMMED)
    conn.execute(f"""CREATE TABLE step_blocks (
        run_id INTEGER NOT NULL REFERENCES runs(id), epoch INTEGER NOT NULL, block INTEGER NOT NULL,
        steps INTEGER NOT NULL, first_step INTEGER NOT NULL, last_step INTEGER NOT NULL,
        pos_negative INTEGER NOT NULL, pos_min REAL NOT NULL, rho_max REAL NOT NULL, rho_pre_max REAL NOT NULL,
        {sums}, PRIMARY KEY (run_id, epoch, block)) WITHOUT ROWID""")
    conn.execute(f"INSERT INTO step_blocks ({', '.join(_COLUMNS)}) SELECT {_AGGREGATES} FROM"
                 f" (SELECT * FROM steps ORDER BY run_id, step) GROUP BY run_id, epoch, {_block_of('step')}")
    conn.execute(f"CREATE TRIGGER steps_add_to_block AFTER INSERT ON steps BEGIN\n    {_add_new_row()}\nEND")
    conn.execute(f"CREATE TRIGGER steps_resum_block_on_delete AFTER DELETE ON steps BEGIN\n    {_resum('OLD')}\nEND")
    conn.execute(f"CREATE TRIGGER steps_resum_blocks_on_update AFTER UPDATE ON steps BEGIN\n"
                 f"    {_resum('OLD')}\n    {_resum('NEW')}\nEND")


def block_series(conn: sqlite3.Connection, run_id: int, columns: tuple[str, ...], lo: int, hi: int, bins: int
                 ) -> list[tuple]:
    """(bin, mean of each column) over steps lo..hi from whole blocks: a block counts in the bin
    its first step falls in. What a long run's charts are drawn from."""
    means = ", ".join(f"SUM(sum_{c}) / SUM(steps)" for c in columns)
    return conn.execute(
        f"SELECT CAST((first_step - ?) * ? / (? - ? + 1) AS INTEGER) AS bin, {means}"
        " FROM step_blocks WHERE run_id = ? GROUP BY bin ORDER BY bin", (lo, bins, hi, lo, run_id)).fetchall()
