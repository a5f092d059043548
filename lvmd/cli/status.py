"""What `lvmd status` says of a run: the data (`status_of`, also the --json form), a table row
and the block for one run. Epochs read by people count from 1; the JSON keeps the stored 0-based."""
from __future__ import annotations

import time

from lvmd.eval.verdict import epoch_of_total
from store.evals import latest_eval
from store.report import throughput
from store.runs import LIVE_STATES, STALE_SECONDS, daemon_alive, step_rate


def status_of(conn, run: dict) -> dict:
    """What `lvmd status` shows of one run, as plain data (the --json form)."""
    live = run["state"] in LIVE_STATES
    age = time.time() - run["heartbeat_at"] if live and run["heartbeat_at"] else None
    # a daemon that holds its lock but has not beaten past the stale mark (SIGSTOPped, swapping,
    # stuck in I/O) is alive and not responding: its last speed says nothing about now
    silent = age is not None and age > STALE_SECONDS and daemon_alive(run)
    rate = step_rate(conn, run["id"]) if run["state"] == "running" and not silent else None
    speed = throughput(conn, run) if rate else {"samples_per_s_per_rank": None}
    left = max((run["total_steps"] or 0) - (run["step"] or 0), 0)
    ev = latest_eval(conn, run["id"])
    return {
        "id": run["id"], "name": run["name"], "state": run["state"], "preset": run["preset"],
        "pid": run["pid"] if live else None, "host": run["host"],
        "epoch": run["epoch"], "total_epochs": run["total_epochs"],      # epoch counted from 0, as stored
        "step": run["step"], "total_steps": run["total_steps"],
        "steps_per_s": rate, "eta_s": left / rate if rate else None,
        "world_size": run.get("world_size") or 1, "samples_per_s_per_rank": speed["samples_per_s_per_rank"],
        "heartbeat_age_s": age, "responding": None if age is None else not silent,
        "last_eval": None if ev is None else {k: ev.get(k) for k in (
            "id", "epoch", "step", "trigger", "gates_passed", "gates_total", "verdict_3of5", "error")},
        "device": run.get("device"), "precision": run.get("precision"), "threads": run.get("threads"),
        "error": run["error"], "out_dir": run["out_dir"],
    }


STATUS_HEADERS = ["run", "name", "state", "step", "epoch", "steps/s", "ETA", "ranks", "heartbeat", "gates"]


def status_row(s: dict) -> list[str]:
    ev = s["last_eval"]
    return [str(s["id"]), s["name"], s["state"], f"{s['step']}/{s['total_steps']}", _epoch(s),
            f"{s['steps_per_s']:.1f}" if s["steps_per_s"] else "–",
            _duration(s["eta_s"]) if s["steps_per_s"] else "–",
            str(s["world_size"]) if s["world_size"] > 1 else "–",   # a torchrun job: its rank count
            _heartbeat(s, short=True),
            f"{ev['gates_passed']}/{ev['gates_total']}" if ev and ev["gates_total"] else "–"]


def status_block(s: dict) -> str:
    lines = [f"run {s['id']} ({s['name']}, preset {s['preset']}): {s['state']}"]
    if s["pid"]:
        lines.append(f"  pid        {s['pid']} on {s['host']}" + (f" (rank 0 of {s['world_size']})" if s["world_size"] > 1 else ""))
    pct = 100 * s["step"] / s["total_steps"] if s["total_steps"] else 0.0
    lines.append(f"  progress   epoch {_epoch(s)}, step {s['step']}/{s['total_steps']} ({pct:.1f} %)")
    if s["precision"]:
        lines.append(f"  hardware   {s['device']} {s['precision']} {s['threads']} thread{'s' * (s['threads'] != 1)}")
    if s["steps_per_s"]:
        per_rank = s["samples_per_s_per_rank"]
        lines.append(f"  speed      {s['steps_per_s']:.1f} steps/s, ETA {_duration(s['eta_s'])}"
                     + (f"; {s['world_size']} ranks × {per_rank:.0f} samples/s" if per_rank and s["world_size"] > 1
                        else f"; {per_rank:.0f} samples/s" if per_rank else ""))
    if s["heartbeat_age_s"] is not None:
        lines.append(f"  heartbeat  {_heartbeat(s, short=False)}")
    ev = s["last_eval"]
    if ev:
        verdict = f"{ev['gates_passed']}/{ev['gates_total']} gates" if ev["gates_total"] else f"error: {ev['error']}"
        # epochs are shown counted from 1 everywhere a person reads them (the --json keeps the stored 0-based)
        where = f"epoch {ev['epoch'] + 1}, " if ev["epoch"] is not None else ""
        lines.append(f"  last 5CAT  {verdict} (eval {ev['id']}, {where}step {ev['step']}, {ev['trigger']})")
    if s["error"]:
        lines.append(f"  error      {s['error']}")
    if s["out_dir"]:
        lines.append(f"  folder     {s['out_dir']}")
    return "\n".join(lines)


def _heartbeat(s: dict, *, short: bool) -> str:
    age = s["heartbeat_age_s"]
    if age is None:
        return "–"
    if s["responding"] is False:
        return f"not responding for {age:.0f} s" if short else \
            f"not responding for {age:.0f} s (its daemon holds the run's lock but has not beaten; " \
            f"SIGSTOPped or stuck? `lvmd stop {s['id']} --force` ends it)"
    return f"{age:.1f} s" if short else f"{age:.1f} s ago"


def _epoch(s: dict) -> str:
    return epoch_of_total(s["epoch"], s["total_epochs"])


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, sec = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"
