"""The seed's verdict on a finished run (SPEC §5) and its text rendering.

Pure functions over what store/report.py reads: `build_report(data, thresholds)` answers the
handoff's questions, judges the success criteria and decides `promote` or `iterate`;
`render_text` draws it for a terminal (unicode sparklines and bars, no dependency).
"""
from __future__ import annotations

import math
import unicodedata
from dataclasses import asdict, dataclass, field

from lvmd.train.rho_cap import over_cap

PROMOTE, ITERATE = "promote", "iterate"
SPARK = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class Thresholds:
    """The seed's success criteria (SPEC §5); each is a parameter of `lvmd report`."""
    rho_cap: float | None = None   # None: the cap in force at each step (the ramp stage's, as v2.2
                                   # has, else loss.rho_cap, else the seed's 0.25)
    skip_share_max: float = 0.01   # skips must stay under this share of batches
    pos_floor: float = 0.0         # pos̄ must never go below this
    margin_min: float = 0.0        # the last epoch's val margin must exceed this
    r_at_5_min: float = 0.70
    val_cos_min: float = 0.48
    gates_min: int = 3             # of 5 (the original code demanded all 5; both are shown)


# The original's expected val margin by epoch (1-based, inclusive; None = open-ended).
EXPECTED_MARGIN: tuple[tuple[int, int | None, float, float], ...] = (
    (1, 2, -0.04, -0.03), (3, 5, -0.03, -0.01), (6, 8, -0.01, 0.02), (9, None, 0.02, 0.05),
)


@dataclass
class Check:
    key: str                 # rho | skips | pos | ratio | collapse | margin | r_at_5 | val_cos | gates
    question: str            # what the seed asks
    passed: bool | None      # None: not measured
    answer: str              # the answer, with its numbers
    value: float | None = None


@dataclass
class Report:
    run: dict
    thresholds: dict
    guardrails: list[Check]
    criteria: list[Check]
    margin_by_epoch: list[dict]
    gates: list[dict]
    verdict: str
    reasons: list[str]
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


# -- the questions -------------------------------------------------------------------------
def guardrail_checks(g: dict, th: Thresholds) -> list[Check]:
    """The handoff's post-run questions over v_guardrail_checks' numbers."""
    if not g["steps"]:
        return [Check(k, q, None, "no steps recorded") for k, q in (
            ("rho", "did ρ ever exceed the cap?"), ("skips", "how many skips?"),
            ("pos", "did pos̄ ever go negative?"), ("ratio", "did ratio climb to positive?"))] + [_collapse(g)]
    counted = th.rho_cap is None           # the view's step counts are against the caps in force
    if counted:
        lo, hi = g["rho_cap_min"], g["rho_cap_max"]
        cap_text = f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g} by ramp stage"
        over = g["rho_over_cap_steps"] > 0
    else:
        cap_text = f"{th.rho_cap:g}"
        over = over_cap(g["rho_max"], th.rho_cap)      # the guardrail's rule (lvmd.train.rho_cap)
    steps_over = f" in {_steps(g['rho_over_cap_steps'])}" if over and counted else ""
    # the steps the trainer flagged `attenuate`: the count the events, compare and the TUI show
    pre = (f"; before the cap ρ went over it in {_steps(g['attenuated_steps'])} (attenuated)"
           if g["attenuated_steps"] and counted else "")
    rho = Check("rho", f"did ρ ever exceed the cap ({cap_text})?", not over,
                (f"yes: max ρ {g['rho_max']:.3f}{steps_over}" if over else f"no: max ρ {g['rho_max']:.3f}") + pre,
                g["rho_max"])
    share = g["skips"] / g["steps"]
    skips = Check("skips", f"how many skips (limit < {th.skip_share_max:.0%} of batches)?",
                  share < th.skip_share_max, f"{g['skips']} of {g['steps']} batches ({share:.2%})", share)
    went_below = g["pos_min"] < th.pos_floor
    pos = Check("pos", "did pos̄ ever go negative?" if th.pos_floor == 0 else f"did pos̄ go below {th.pos_floor:g}?",
                not went_below,
                (f"yes: min pos̄ {g['pos_min']:+.3f}" + (f" ({g['pos_negative_steps']} steps below 0)"
                                                          if th.pos_floor == 0 else "") if went_below
                 else f"no: min pos̄ {g['pos_min']:+.3f}"), g["pos_min"])
    first, last = g["ratio_first_epoch"], g["ratio_last_epoch"]
    climbed = g["epochs_with_steps"] > 1 and last > 0 and last > first
    trend = (f"epoch mean {first:+.3f} (first) → {last:+.3f} (last)" if g["epochs_with_steps"] > 1
             else f"only one epoch (mean {last:+.3f}): no climb to see")
    ratio = Check("ratio", "did ratio climb to positive?", climbed, ("yes: " if climbed else "no: ") + trend, last)
    return [rho, skips, pos, ratio, _collapse(g)]


def _steps(n: int) -> str:
    return f"{n} step" if n == 1 else f"{n} steps"


def _collapse(g: dict) -> Check:
    n = g["collapse_warnings"]
    return Check("collapse", "any collapse warnings?", n == 0, "none" if n == 0 else f"yes: {n}", n)


def model_checks(summary: dict, latest_eval: dict | None, th: Thresholds) -> list[Check]:
    """The model's success criteria: margin, R@5, val cos (last epoch) and 5CAT gates."""
    margin, cos = summary["last_margin"], summary["last_val_cos"]
    r5, r5_source = summary["last_r_at_5"], "last epoch"
    if r5 is None and latest_eval is not None and latest_eval["val_r_at_5"] is not None:
        r5, r5_source = latest_eval["val_r_at_5"], f"5CAT VAL, epoch {_epoch1(latest_eval['epoch'])}"
    checks = [
        _threshold("margin", ("margin positive" if th.margin_min == 0 else f"margin > {th.margin_min:+.3f}")
                   + " (+.03…+.05 hoped)", margin, th.margin_min, strict=True,
                   fmt="{:+.4f}", source="last epoch"),
        _threshold("r_at_5", f"R@5 ≥ {th.r_at_5_min:.2f}", r5, th.r_at_5_min, fmt="{:.3f}", source=r5_source,
                   missing="not measured (needs data.articles: per-epoch check or 5CAT)"),
        _threshold("val_cos", f"val cos ≥ {th.val_cos_min:.2f}", cos, th.val_cos_min, fmt="{:.3f}", source="last epoch"),
    ]
    if latest_eval is None:
        checks.append(Check("gates", f"5CAT gates ≥ {th.gates_min}/5", None, "no finished 5CAT evaluation"))
    else:
        passed, total = latest_eval["gates_passed"], latest_eval["gates_total"] or 5
        rule_all = "passes" if passed == total else "fails"
        checks.append(Check("gates", f"5CAT gates ≥ {th.gates_min}/5", passed >= th.gates_min,
                            f"{passed}/{total} (epoch {_epoch1(latest_eval['epoch'])}); the original's all-{total} "
                            f"rule {rule_all}", passed))
    return checks


def _threshold(key: str, question: str, value, limit: float, *, fmt: str, source: str, strict: bool = False,
               missing: str = "not measured") -> Check:
    if value is None:
        return Check(key, question, None, missing)
    ok = value > limit if strict else value >= limit
    return Check(key, question, ok, f"{fmt.format(value)} ({source})", value)


def _epoch1(epoch) -> str:
    return "?" if epoch is None else str(int(epoch) + 1)


def expected_band(epoch1: int) -> tuple[float, float] | None:
    """The original's expected margin band for a 1-based epoch."""
    for first, last, lo, hi in EXPECTED_MARGIN:
        if epoch1 >= first and (last is None or epoch1 <= last):
            return lo, hi
    return None


def margin_by_epoch(epochs: list[dict]) -> list[dict]:
    rows = []
    for e in epochs:
        epoch1 = int(e["epoch"]) + 1
        band, margin = expected_band(epoch1), e["val_margin"]
        if margin is None or band is None:
            where = "unknown"
        else:
            where = "below" if margin < band[0] else "above" if margin > band[1] else "within"
        rows.append({"epoch": epoch1, "margin": margin, "band": band, "position": where,
                     "val_cos": e["val_cos"], "r_at_5": e["r_at_5"], "skips": e["skips"], "steps": e["steps"],
                     "ratio_mean": e["ratio_mean"], "rho_max": e["rho_max"]})
    return rows


def decide(checks: list[Check], run_state: str) -> tuple[str, list[str]]:
    """promote only when every criterion was measured and met and the run did not fail."""
    def say(c: Check) -> str:
        return f"{c.question} {c.answer}" if c.question.endswith("?") else f"{c.question}: {c.answer}"
    reasons = [say(c) for c in checks if c.passed is False] + [say(c) for c in checks if c.passed is None]
    if run_state in ("failed", "crashed"):
        reasons.append(f"the run ended {run_state}")
    return (ITERATE if reasons else PROMOTE), reasons


def build_report(data: dict, th: Thresholds = Thresholds()) -> Report:
    """data: store.report.report_data(...)."""
    run, summary, g = data["run"], data["summary"], data["guardrails"]
    guardrails = guardrail_checks(g, th)
    criteria = model_checks(summary, data["eval"], th)
    verdict, reasons = decide(guardrails + criteria, run["state"])
    notes = []
    if run["state"] not in ("finished", "stopped", "failed", "crashed"):
        notes.append(f"the run is {run['state']}: this verdict is provisional")
    info = {"id": run["id"], "name": run["name"], "preset": run["preset"], "compat": run["compat"],
            "state": run["state"], "epochs_done": summary["epochs_done"], "total_epochs": run["total_epochs"],
            "steps": summary["steps"], "best_margin": summary["best_margin"],
            **data.get("throughput", {"world_size": run.get("world_size") or 1})}
    # the highest cap in force stands for the run's caps in the JSON and the ρ curve's scale
    own_cap = g["rho_cap_max"] if g["rho_cap_max"] is not None else g["rho_cap"]
    resolved = asdict(th) | {"rho_cap": th.rho_cap if th.rho_cap is not None else own_cap}
    return Report(info, resolved, guardrails, criteria, margin_by_epoch(data["epochs"]),
                  (data["eval"] or {}).get("gates", []), verdict, reasons, notes)


# -- text charts ---------------------------------------------------------------------------
def sparkline(values: list[float | None], lo: float | None = None, hi: float | None = None) -> str:
    """One block character per value, scaled to [lo, hi] (default: the values' range)."""
    finite = [v for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return ""
    lo = min(finite) if lo is None else lo
    hi = max(finite) if hi is None else hi
    span = hi - lo
    out = []
    for v in values:
        if v is None or not math.isfinite(v):
            out.append(" ")
        else:
            level = 0 if span <= 0 else int((min(max(v, lo), hi) - lo) / span * (len(SPARK) - 1) + 0.5)
            out.append(SPARK[level])
    return "".join(out)


def signed_bar(value: float | None, scale: float, width: int = 12) -> str:
    """A bar growing left (negative) or right (positive) of a centre line, width cells a side."""
    if value is None or not math.isfinite(value) or scale <= 0:
        return " " * width + "│" + " " * width
    cells = min(width, round(abs(value) / scale * width))
    if value < 0:
        return " " * (width - cells) + "█" * cells + "│" + " " * width
    return " " * width + "│" + "█" * cells + " " * (width - cells)


def render_text(report: Report, series: dict[str, list[float]]) -> str:
    r = report.run
    lines = [f"run {r['id']} {r['name']!r} · preset {r['preset']} · compat {r['compat']} · {r['state']} · "
             f"epoch {epoch_of_total(r['epochs_done'], r['total_epochs'])} ({r['epochs_done']} finished) · "
             f"{r['steps']} steps" + _speed(r), ""]
    for title, checks in (("Guardrails (the seed's questions)", report.guardrails),
                          ("Success criteria", report.criteria)):
        lines.append(title)
        width = max(_width(c.question) for c in checks)
        for c in checks:
            mark = "?" if c.passed is None else "✓" if c.passed else "✗"
            lines.append(f"  {mark} {_pad(c.question, width, left=True)}  {c.answer}")
        lines.append("")
    lines += _margin_lines(report.margin_by_epoch)
    lines += _curve_lines(series, report.thresholds["rho_cap"])
    if report.gates:
        lines.append("5CAT gates (latest evaluation)")
        for g in report.gates:
            mark = "✓" if g["passed"] else "✗"
            failed = f"  failed: {g['failed_metrics']}" if g["failed_metrics"] else ""
            lines.append(f"  {mark} {g['gate']} {g['split']:<7} {g['checks_passed']}/{g['checks']} checks{failed}")
        lines.append("")
    lines.append(f"Verdict: {report.verdict.upper()}")
    lines += [f"  - {reason}" for reason in report.reasons]
    lines += [f"  note: {note}" for note in report.notes]
    return "\n".join(lines)


def _speed(r: dict) -> str:
    """World size and per-rank throughput (newest steps), when known."""
    world = r.get("world_size") or 1
    text = f" · {world} rank{'s' if world > 1 else ''}"
    if r.get("steps_per_s"):
        text += f" · {r['steps_per_s']:.1f} steps/s"
    if r.get("samples_per_s_per_rank"):
        text += f" · {r['samples_per_s_per_rank']:.0f} samples/s per rank"
    return text


def _margin_lines(rows: list[dict]) -> list[str]:
    if not rows:
        return ["Margin per epoch: no epoch finished yet", ""]
    scale = max([abs(x["margin"]) for x in rows if x["margin"] is not None] + [0.05])
    out = [f"Margin per epoch against the expected band (bar: ±{scale:.3f})"]
    for x in rows:
        margin = "   n/a " if x["margin"] is None else f"{x['margin']:+.4f}"
        band = "" if x["band"] is None else f"band {x['band'][0]:+.2f}…{x['band'][1]:+.2f} {x['position']}"
        cos = "" if x["val_cos"] is None else f"  val cos {x['val_cos']:.3f}"
        out.append(f"  e{x['epoch']:<3} {margin} {signed_bar(x['margin'], scale)} {band}{cos}")
    return out + [""]


def _curve_lines(series: dict[str, list[float]], cap: float) -> list[str]:
    if not series.get("rho"):
        return []
    pos_neg = [v for k in ("pos", "neg") for v in series[k] if v is not None]
    lo, hi = min(pos_neg), max(pos_neg)
    # ρ from 0 up to the cap (or higher, if it went there): the height shows the headroom
    rho_top = max([cap] + [v for v in series["rho_pre"] if v is not None])
    rows = [("ρ", series["rho"], 0.0, rho_top, f"scale 0…{rho_top:.3g}, cap {cap:g}"),
            ("ρ pre-cap", series["rho_pre"], 0.0, rho_top, ""),
            ("pos̄", series["pos"], lo, hi, "pos̄ and neḡ share a scale"),
            ("neḡ", series["neg"], lo, hi, ""),
            ("ratio", series["ratio"], None, None, ""),
            ("skip share", series["skip"], 0.0, 1.0, "0…1")]
    out = [f"Curves over the run ({len(series['rho'])} bins, mean per bin)"]
    for name, values, a, b, note in rows:
        finite = [v for v in values if v is not None]
        rng = f"{min(finite):+.3f}…{max(finite):+.3f}" if finite else ""
        out.append(f"  {_pad(name, 10, left=True)} {sparkline(values, a, b)}  {rng}  {note}".rstrip())
    return out + [""]


# -- tables (runs, compare) ----------------------------------------------------------------
def fmt(value, spec: str = "") -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return format(value, spec) if spec else str(value)


def format_table(headers: list[str], rows: list[list[str]], *, left_columns: int = 1) -> str:
    """Columns padded to their widest cell; the first `left_columns` left-aligned (labels),
    the rest right-aligned (numbers)."""
    widths = [max(_width(r[i]) for r in [headers, *rows]) for i in range(len(headers))]

    def line(cells):
        return "  ".join(_pad(c, w, left=i < left_columns) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([line(headers), line(["─" * w for w in widths]), *map(line, rows)])


def _width(text: str) -> int:
    return sum(0 if unicodedata.combining(ch) else 1 for ch in text)   # "pos̄" is 3 columns wide


def _pad(text: str, width: int, *, left: bool) -> str:
    gap = " " * (width - _width(text))
    return text + gap if left else gap + text


def epoch_of_total(epoch: int | None, total: int | None) -> str:
    """`36/60`: the epoch in progress (0-based `epoch`, as runs.epoch stores it and as the count of
    finished epochs reads), counted from 1 as every human view counts it, and the total once the
    last has run. SQL and JSON keep the stored 0-based numbers (README, the database)."""
    if epoch is None:
        return f"–/{fmt(total)}"
    shown = min(int(epoch) + 1, total) if total else int(epoch) + 1
    return f"{shown}/{fmt(total)}"


RUN_TABLE_HEADERS = ["id", "name", "preset", "state", "epoch", "margin", "best", "val cos", "R@5",
                     "gates", "skips", "ρ max", "min pos̄"]


def run_table_rows(summaries: list[dict]) -> list[list[str]]:
    """`lvmd runs`: one line per v_run_summary row."""
    return [[str(s["run_id"]), s["name"], s["preset"] or "", s["state"],
             epoch_of_total(s["epochs_done"], s["total_epochs"]), fmt(s["last_margin"], "+.4f"),
             fmt(s["best_margin"], "+.4f"), fmt(s["last_val_cos"], ".3f"), fmt(s["last_r_at_5"], ".3f"),
             "–" if s["last_gates_passed"] is None else f"{s['last_gates_passed']}/{s['last_gates_total']}",
             fmt(s["skip_rate"], ".2%"), fmt(s["rho_max"], ".3f"), fmt(s["pos_min"], "+.3f")] for s in summaries]


def compare_rows(items: list[tuple[dict, Report]]) -> list[list[str]]:
    """`lvmd compare`: one line per metric, one column per run. items: (report data, report)."""
    def crit(rep: Report, key: str):
        return next(c.value for c in rep.criteria if c.key == key)

    def gates(data):
        ev = data["eval"]
        return "–" if ev is None else f"{ev['gates_passed']}/{ev['gates_total']}"

    def ratio(g):
        if not g["steps"]:
            return "–"
        return f"{g['ratio_first_epoch']:+.3f} → {g['ratio_last_epoch']:+.3f}"

    spec = [
        ("name", lambda d, r: d["run"]["name"]),
        ("preset", lambda d, r: d["run"]["preset"] or ""),
        ("state", lambda d, r: d["run"]["state"]),
        ("epoch", lambda d, r: epoch_of_total(d["summary"]["epochs_done"], d["run"]["total_epochs"])),
        ("steps", lambda d, r: fmt(d["summary"]["steps"])),
        ("last margin", lambda d, r: fmt(crit(r, "margin"), "+.4f")),
        ("best margin", lambda d, r: fmt(d["summary"]["best_margin"], "+.4f")),
        ("val cos", lambda d, r: fmt(crit(r, "val_cos"), ".3f")),
        ("R@5", lambda d, r: fmt(crit(r, "r_at_5"), ".3f")),
        ("5CAT gates", lambda d, r: gates(d)),
        ("skip share", lambda d, r: fmt(d["guardrails"]["skip_share"], ".2%")),
        ("ρ max", lambda d, r: fmt(d["guardrails"]["rho_max"], ".3f")),
        ("ρ pre-cap max", lambda d, r: fmt(d["guardrails"]["rho_pre_max"], ".3f")),
        ("steps attenuated", lambda d, r: fmt(d["guardrails"]["attenuated_steps"])),
        ("min pos̄", lambda d, r: fmt(d["guardrails"]["pos_min"], "+.3f")),
        ("ratio first → last", lambda d, r: ratio(d["guardrails"])),
        ("collapse warnings", lambda d, r: fmt(d["guardrails"]["collapse_warnings"])),
        ("verdict", lambda d, r: r.verdict),
    ]
    return [[label, *(get(d, r) for d, r in items)] for label, get in spec]
