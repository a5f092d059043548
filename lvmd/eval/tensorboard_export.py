"""A run mirrored into TensorBoard event files by TensorBoard's own writer
(torch.utils.tensorboard), so it sits beside a team's other runs in `tensorboard --logdir`.

Tags (the x axis is the step, the wall time the row's own `t`):
  steps/<column>                  every column of `steps`: lr, epoch and the 19 guardrail metrics
  epochs/<column>                 each epoch's training and validation numbers, at its last step
  5cat/<split>/<metric>           every 5CAT number of every evaluation, at the evaluation's step
  gates/<split>/<gate>/<metric>   a 5CAT gate: 1 passed, 0 failed
  evals/<column>                  gates_passed, gates_total, verdict_3of5, verdict_all5, duration_s
  events/skips, events/attenuations   how many so far, at each event's step (the slope is the rate)
  events/skip/<key>, events/attenuate/<key>   the numbers the event carries (pos, neg, gap; rho_pre, ...)
  text `config`, and the hparams plugin's session (the flattened config)

Scalars are TensorBoard's classic float32 `simple_value`s: the one form every reader takes
(EventAccumulator.Scalars, the dashboard's default fast loader, which shows no float64 tensor at
all; checked with tensorboard 2.21). The SQLite file keeps the exact float64 values. What a row
holds is data: a value that is not a finite number is left out, never written as something else.
"""
from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from lvmd.errors import UserError
from store.increments import STEP_CHUNK, STEP_FIELDS, Cursor, epochs_after, events_after, finished_evals_after, \
    steps_after
from store.reader import run_row
from store.runs import stale_runs
from store.schema import TERMINAL_STATES

INSTALL_HINT = "pip install 'lvmd[tensorboard]'"
FOLLOW_INTERVAL_S = 1.0     # --follow reads the database at most this often
EVENT_COUNTERS = {"skip": "events/skips", "attenuate": "events/attenuations"}
STEP_TAGS = tuple(f"steps/{c}" for c in STEP_FIELDS if c not in ("step", "t"))   # step and t place the row
EPOCH_AXES = ("run_id", "epoch", "step", "t")
EVAL_SCALARS = ("gates_passed", "gates_total", "verdict_3of5", "verdict_all5", "duration_s")
# The hparams dashboard shows these scalars' last values beside each run's configuration.
HPARAM_METRICS = ("epochs/val_margin", "epochs/val_cos", "epochs/r_at_5", "evals/gates_passed")
_KEY = re.compile(r"[A-Za-z0-9_.]+")


def tensorboard_api() -> tuple[Callable, Callable, Callable]:
    """TensorBoard's SummaryWriter and summary builders, or a one-line UserError saying what to install."""
    try:
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams, scalar
    except ImportError as exc:
        raise UserError(f"--tensorboard needs the tensorboard package ({exc}); install it: {INSTALL_HINT}") from None
    return SummaryWriter, scalar, hparams


def run_folder(root: Path, run: dict) -> Path:
    """ROOT/<run name>: one TensorBoard run per lvmd run. The name is data, so only letters,
    digits and . _ - reach the path (never a separator, never a leading dot)."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", str(run["name"])).strip("._-")
    return root / (name or f"run-{run['id']}")


def event_files(folder: Path) -> list[Path]:
    return sorted(folder.glob("events.out.tfevents.*")) if folder.is_dir() else []


def prepare_folder(root: Path, folder: Path, *, force: bool) -> None:
    """Refuse a ROOT that is a file, and a run folder that already holds event files unless
    --force (then only those files go: TensorBoard would show both copies of every point)."""
    if root.exists() and not root.is_dir():
        raise UserError(f"{root}: is a file; --tensorboard names a folder")
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: is a file, not a folder for the run's event files")
    old = event_files(folder)
    if old and not force:
        raise UserError(f"{folder}: already holds TensorBoard event files; pass --force to replace them")
    for path in old:
        path.unlink()


class RunMirror:
    """Writes each row of one run once, in the database's order, through one SummaryWriter.
    sync() copies what arrived since the last call; a step's 21 numbers go in one event."""

    def __init__(self, conn, run: dict, folder: Path) -> None:
        SummaryWriter, self._scalar, hparams = tensorboard_api()
        self.conn, self.run_id = conn, run["id"]
        self.cursor = Cursor()
        self.counts = {"steps": 0, "epochs": 0, "evals": 0, "events": 0}
        self._seen = dict.fromkeys(EVENT_COUNTERS, 0)
        # flushed by sync(); the queue bounds memory between two flushes
        self.writer = SummaryWriter(str(folder), max_queue=1024, flush_secs=3600)
        config = _json_object(run.get("config_json"))
        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2, sort_keys=True) + "\n```", 0)
        session = {**_flatten(config), "preset": run.get("preset") or ""}
        for summary in hparams(session, dict.fromkeys(HPARAM_METRICS, 0.0)):
            self.writer.file_writer.add_summary(summary, 0)

    def sync(self) -> int:
        """Copy every row added since the last sync; returns how many rows that was."""
        before = sum(self.counts.values())
        self._sync_steps()
        for row in epochs_after(self.conn, self.run_id, self.cursor.epoch):
            self._add(((f"epochs/{k}", v) for k, v in row.items() if k not in EPOCH_AXES),
                      row["step"], row["t"])
            self.cursor.epoch = row["epoch"]
            self.counts["epochs"] += 1
        for ev in finished_evals_after(self.conn, self.run_id, self.cursor.eval_id):
            values = [(f"evals/{k}", ev.get(k)) for k in EVAL_SCALARS]
            values += [(f"5cat/{m['split']}/{m['name']}", m["value"]) for m in ev["metrics"]]
            values += [(f"gates/{g['split']}/{g['gate']}/{g['metric']}", g["passed"]) for g in ev["gates"]]
            self._add(values, ev["step"], ev["finished_at"])
            self.cursor.eval_id = ev["id"]
            self.counts["evals"] += 1
        for ev in events_after(self.conn, self.run_id, self.cursor.event_id, tuple(EVENT_COUNTERS)):
            self._seen[ev["kind"]] += 1
            detail = _json_object(ev["detail"])
            values = [(EVENT_COUNTERS[ev["kind"]], self._seen[ev["kind"]])]
            values += [(f"events/{ev['kind']}/{k}", v) for k, v in detail.items() if _KEY.fullmatch(str(k))]
            self._add(values, ev["step"], ev["t"])
            self.cursor.event_id = ev["id"]
            self.counts["events"] += 1
        self.writer.flush()
        return sum(self.counts.values()) - before

    def _sync_steps(self) -> None:
        picks = [i for i, c in enumerate(STEP_FIELDS) if c not in ("step", "t")]
        while rows := steps_after(self.conn, self.run_id, self.cursor.step):
            for row in rows:
                self._add(zip(STEP_TAGS, (row[i] for i in picks)), row[0], row[2])
            self.cursor.step = rows[-1][0]
            self.counts["steps"] += len(rows)
            if len(rows) < STEP_CHUNK:
                break

    def _add(self, values: Iterable[tuple[str, Any]], step: int | None, walltime: float | None) -> None:
        """One event holding every finite number of `values` at `step`."""
        summary = None
        for tag, value in values:
            number = _number(value)
            if number is None:
                continue
            one = self._scalar(tag, number)
            if summary is None:
                summary = one
            else:
                summary.value.extend(one.value)
        if summary is not None:
            step = self.cursor.step if step is None else step
            self.writer.file_writer.add_summary(summary, max(step, 0), _number(walltime))

    def close(self) -> None:
        self.writer.close()


def follow(mirror: RunMirror, *, interval: float = FOLLOW_INTERVAL_S,
           sleep: Callable[[float], None] = time.sleep) -> tuple[dict, str | None]:
    """Mirror a live run until it ends, reading at most once per `interval`. Returns the run's
    last row and, when its daemon vanished without recording an end, why it stopped following."""
    while True:
        started = time.monotonic()
        mirror.sync()
        run = run_row(mirror.conn, mirror.run_id)
        if run is None:
            raise UserError(f"run {mirror.run_id} is no longer in the database")
        gone = None
        if run["state"] not in TERMINAL_STATES:
            gone = next((why["reason"] for r, why in stale_runs(mirror.conn) if r["id"] == mirror.run_id), None)
        if run["state"] in TERMINAL_STATES or gone:
            mirror.sync()       # the rows committed before the final state
            return run, gone
        sleep(max(0.0, interval - (time.monotonic() - started)))


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _json_object(text: Any) -> dict:
    """A stored JSON object, or {} for anything else (a row is data, never trusted to parse)."""
    try:
        value = json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _flatten(config: dict, prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 5e-4}} → {"train.lr": 5e-4}; lists become JSON text (hparams holds only
    numbers, strings and booleans)."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        elif value is not None:
            flat[name] = json.dumps(value, sort_keys=True)
    return flat
