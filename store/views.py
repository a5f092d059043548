"""Views for post-run queries (sqlite3, sqlite-utils, pandas), created by a schema migration.

The SQL a migration ran is part of that migration: a shipped set is never edited. To change a
view, add a new set here (VIEWS_V2 = {...}) and a new migration that calls `create_views` with
it; `create_views` drops any old definition first.

Flags (0/1) use the seed's thresholds (SPEC §5); `lvmd report` reads the raw numbers beside
them and applies its own (configurable) thresholds.
"""
from __future__ import annotations

import sqlite3
from typing import Mapping

# Constants baked into VIEWS_V1 (so part of a shipped migration: never change them).
# Slack for "ρ above the cap": the cap itself is stored through float32 (0.35 → 0.34999999).
RHO_CAP_TOLERANCE = 1e-6
# The seed's cap, used when a run has none (loss.rho_cap = 0, e.g. preset v1).
SEED_RHO_CAP = 0.25
SEED_SKIP_SHARE_MAX = 0.01

# Pieces of v_guardrail_checks that its versions share, exactly as the shipped sets spelled them.
_RUN_CAP = f"COALESCE(NULLIF(json_extract(config_json, '$.loss.rho_cap'), 0), {SEED_RHO_CAP}) AS rho_cap"
# per run, in `stats`: the numbers that do not depend on the cap
_STEP_STATS = """\
                   (SELECT CAST(TOTAL(s.skip) AS INTEGER) FROM steps s WHERE s.run_id = c.run_id) AS skips,
                   (SELECT MIN(s.pos) FROM steps s WHERE s.run_id = c.run_id) AS pos_min,
                   (SELECT COUNT(*) FROM steps s WHERE s.run_id = c.run_id AND s.pos < 0) AS pos_negative_steps,
                   (SELECT COUNT(DISTINCT s.epoch) FROM steps s WHERE s.run_id = c.run_id) AS epochs_with_steps,
                   (SELECT AVG(s.ratio) FROM steps s WHERE s.run_id = c.run_id
                    GROUP BY s.epoch ORDER BY s.epoch LIMIT 1) AS ratio_first_epoch,
                   (SELECT AVG(s.ratio) FROM steps s WHERE s.run_id = c.run_id
                    GROUP BY s.epoch ORDER BY s.epoch DESC LIMIT 1) AS ratio_last_epoch,
                   (SELECT COUNT(*) FROM events v WHERE v.run_id = c.run_id
                                                    AND v.kind = 'collapse_warning') AS collapse_warnings
            FROM caps c"""
# in `flags`: the seed's 0/1 answers, then the one that sums them up
_FLAGS = f"""\
                   1.0 * skips / NULLIF(steps, 0) AS skip_share,
                   CASE WHEN steps > 0 THEN rho_over_cap_steps = 0 END AS rho_held,
                   CASE WHEN steps > 0 THEN 1.0 * skips / steps < {SEED_SKIP_SHARE_MAX} END AS skips_ok,
                   CASE WHEN steps > 0 THEN pos_min >= 0 END AS pos_held,
                   -- "climbed": the last epoch's mean ratio is positive and above the first epoch's
                   CASE WHEN steps > 0 THEN epochs_with_steps > 1 AND ratio_last_epoch > 0
                                            AND ratio_last_epoch > ratio_first_epoch END AS ratio_climbed,
                   collapse_warnings = 0 AS no_collapse_warning"""
_ALL_HELD = """\
        SELECT *, rho_held AND skips_ok AND pos_held AND ratio_climbed AND no_collapse_warning AS all_held
        FROM flags"""
# v2: the cap in force at step s's epoch, from the `stages` table
_CAP_IN_FORCE = """(
                        SELECT g.cap FROM stages g WHERE g.run_id = s.run_id
                                                     AND s.epoch >= g.from_epoch AND s.epoch < g.until_epoch)"""

# v_run_summary's columns that do not come from the steps, and its joins (v1 and v3)
_SUMMARY_HEAD = """\
        SELECT r.id AS run_id, r.name, r.preset, r.compat, r.state,
               (SELECT COUNT(*) FROM epochs e WHERE e.run_id = r.id) AS epochs_done,
               r.total_epochs,
               (SELECT MAX(e.val_margin) FROM epochs e WHERE e.run_id = r.id) AS best_margin,
               last.val_margin AS last_margin, last.val_cos AS last_val_cos, last.r_at_5 AS last_r_at_5,
               ev.gates_passed AS last_gates_passed, ev.gates_total AS last_gates_total,
"""
_SUMMARY_FROM = """\
               r.created_at, r.ended_at
        FROM runs r
        LEFT JOIN epochs last
               ON last.run_id = r.id AND last.epoch = (SELECT MAX(epoch) FROM epochs WHERE run_id = r.id)
        -- the latest evaluation that produced a gate count (a failed one has none)
        LEFT JOIN evals ev
               ON ev.id = (SELECT MAX(id) FROM evals WHERE run_id = r.id AND gates_passed IS NOT NULL)"""

VIEWS_V1: dict[str, str] = {
    # Step aggregates per run and epoch; the base of the per-epoch views below.
    "v_epoch_steps": """
        SELECT run_id, epoch,
               COUNT(*) AS steps, MIN(step) AS first_step, MAX(step) AS last_step,
               CAST(TOTAL(skip) AS INTEGER) AS skips,
               CAST(TOTAL(attenuate) AS INTEGER) AS attenuations,
               AVG(ratio) AS ratio_mean, AVG(pos) AS pos_mean, AVG(neg) AS neg_mean,
               MIN(pos) AS pos_min, MAX(rho) AS rho_max, MAX(rho_pre) AS rho_pre_max
        FROM steps
        GROUP BY run_id, epoch""",

    "v_skip_rate_by_epoch": """
        SELECT run_id, epoch, steps, skips, 1.0 * skips / steps AS skip_rate,
               attenuations, 1.0 * attenuations / steps AS attenuate_rate
        FROM v_epoch_steps""",

    # One row per run. Correlated subqueries (not a GROUP BY over all steps) so that
    # `WHERE run_id = ?` reads only that run's rows through the (run_id, step) index.
    "v_run_summary": f"""
{_SUMMARY_HEAD}\
               (SELECT COUNT(*) FROM steps s WHERE s.run_id = r.id) AS steps,
               (SELECT AVG(s.skip) FROM steps s WHERE s.run_id = r.id) AS skip_rate,
               (SELECT MAX(s.rho) FROM steps s WHERE s.run_id = r.id) AS rho_max,
               (SELECT MAX(s.rho_pre) FROM steps s WHERE s.run_id = r.id) AS rho_pre_max,
               (SELECT MIN(s.pos) FROM steps s WHERE s.run_id = r.id) AS pos_min,
{_SUMMARY_FROM}""",

    # A gate passes iff every one of its metric rows passes (a NULL `passed` counts as a fail).
    "v_gates": """
        SELECT e.run_id, g.eval_id, e.epoch, e.step, e.trigger, g.split, g.gate,
               COUNT(*) AS checks,
               CAST(TOTAL(COALESCE(g.passed, 0)) AS INTEGER) AS checks_passed,
               MIN(COALESCE(g.passed, 0)) AS passed,
               GROUP_CONCAT(CASE WHEN COALESCE(g.passed, 0) = 0 THEN g.metric END, ', ') AS failed_metrics
        FROM gates g JOIN evals e ON e.id = g.eval_id
        GROUP BY g.eval_id, g.split, g.gate""",

    # The seed's guardrail questions per run (SPEC §5), raw numbers plus 0/1 flags.
    # `stats` is DISTINCT only to keep SQLite from flattening it into the outer query, where
    # every reference to a column would re-run its subquery; `WHERE run_id = ?` is still
    # pushed into it, so each subquery reads one run's rows once through the index.
    "v_guardrail_checks": f"""
        WITH caps AS (
            SELECT id AS run_id, name,
                   {_RUN_CAP}
            FROM runs
        ), stats AS (
            SELECT DISTINCT c.run_id, c.name, c.rho_cap,
                   (SELECT COUNT(*) FROM steps s WHERE s.run_id = c.run_id) AS steps,
                   (SELECT MAX(s.rho) FROM steps s WHERE s.run_id = c.run_id) AS rho_max,
                   (SELECT MAX(s.rho_pre) FROM steps s WHERE s.run_id = c.run_id) AS rho_pre_max,
                   (SELECT COUNT(*) FROM steps s WHERE s.run_id = c.run_id
                                                   AND s.rho > c.rho_cap + {RHO_CAP_TOLERANCE}) AS rho_over_cap_steps,
                   (SELECT COUNT(*) FROM steps s WHERE s.run_id = c.run_id
                                                   AND s.rho_pre > c.rho_cap + {RHO_CAP_TOLERANCE}) AS rho_pre_over_cap_steps,
{_STEP_STATS}
        ), flags AS (
            SELECT *,
{_FLAGS}
            FROM stats
        )
{_ALL_HELD}""",
}

# v2 and v3 share: each run's cap, each ramp stage's epochs and cap, and the flags over them
_CAPS_AND_STAGES = f"""\
        WITH caps AS (
            SELECT id AS run_id, name, config_json,
                   {_RUN_CAP}
            FROM runs
        ), stages AS (
            SELECT c.run_id,
                   COALESCE(LAG(json_extract(j.value, '$.until')) OVER w, 0) AS from_epoch,
                   CASE WHEN LEAD(j.key) OVER w IS NULL THEN 9e18
                        ELSE json_extract(j.value, '$.until') END AS until_epoch,
                   COALESCE(NULLIF(json_extract(j.value, '$.rho_cap'), 0), c.rho_cap) AS cap
            FROM caps c, json_each(c.config_json, '$.loss.ramp') j
            WINDOW w AS (PARTITION BY c.run_id ORDER BY j.key)
            UNION ALL
            SELECT run_id, 0, 9e18, rho_cap FROM caps
            WHERE COALESCE(json_array_length(config_json, '$.loss.ramp'), 0) = 0
        )"""
_STAGED_FLAGS = f"""\
        ), flags AS (
            SELECT *,
                   -- the lowest and highest cap in force over the epochs that have steps
                   (SELECT MIN(g.cap) FROM stages g WHERE g.run_id = st.run_id AND g.from_epoch <= st.last_epoch
                                                      AND g.until_epoch > st.first_epoch) AS rho_cap_min,
                   (SELECT MAX(g.cap) FROM stages g WHERE g.run_id = st.run_id AND g.from_epoch <= st.last_epoch
                                                      AND g.until_epoch > st.first_epoch) AS rho_cap_max,
{_FLAGS}
            FROM stats st
        )
{_ALL_HELD}"""
# v2: ρ is held to the cap in force at each step, as the trainer, the collapse watch and the TUI
# hold it: the ramp stage's own cap (v2.2: .35/.45/.50/.50 by stage) where it has one, else
# loss.rho_cap, else the seed's 0.25. v1 compared every step with loss.rho_cap, which flagged
# v2.2 runs as over their cap in every step above 0.25.
VIEWS_V2: dict[str, str] = VIEWS_V1 | {
    # `stages`: each ramp stage's epochs [from_epoch, until_epoch) and its cap (the last stage
    # runs on; a run without a ramp has one stage), materialised once: it has a window function.
    "v_guardrail_checks": f"""
{_CAPS_AND_STAGES}, stats AS (
            SELECT DISTINCT c.run_id, c.name, c.rho_cap,
                   -- epochs grow with steps: the run's first and last epoch are two index lookups
                   (SELECT s.epoch FROM steps s WHERE s.run_id = c.run_id ORDER BY s.step LIMIT 1) AS first_epoch,
                   (SELECT s.epoch FROM steps s WHERE s.run_id = c.run_id ORDER BY s.step DESC LIMIT 1) AS last_epoch,
                   (SELECT COUNT(*) FROM steps s WHERE s.run_id = c.run_id) AS steps,
                   (SELECT MAX(s.rho) FROM steps s WHERE s.run_id = c.run_id) AS rho_max,
                   (SELECT MAX(s.rho_pre) FROM steps s WHERE s.run_id = c.run_id) AS rho_pre_max,
                   (SELECT COUNT(*) FROM steps s WHERE s.run_id = c.run_id AND s.rho > {RHO_CAP_TOLERANCE} + {_CAP_IN_FORCE}
                   ) AS rho_over_cap_steps,
                   (SELECT COUNT(*) FROM steps s WHERE s.run_id = c.run_id AND s.rho_pre > {RHO_CAP_TOLERANCE} + {_CAP_IN_FORCE}
                   ) AS rho_pre_over_cap_steps,
{_STEP_STATS}
{_STAGED_FLAGS}""",
}


def _guardrail_checks(counts: str) -> str:
    """v_guardrail_checks: every run's guardrail numbers over its step_blocks; `counts` are the
    over-cap and attenuated columns, the one part the view's versions define differently."""
    return f"""
{_CAPS_AND_STAGES}, epochs_of AS (
            SELECT run_id, epoch, SUM(sum_ratio) / SUM(steps) AS ratio_mean FROM step_blocks GROUP BY run_id, epoch
        ), stats AS (
            SELECT DISTINCT c.run_id, c.name, c.rho_cap,
                   (SELECT MIN(b.epoch) FROM step_blocks b WHERE b.run_id = c.run_id) AS first_epoch,
                   (SELECT MAX(b.epoch) FROM step_blocks b WHERE b.run_id = c.run_id) AS last_epoch,
                   (SELECT COALESCE(SUM(b.steps), 0) FROM step_blocks b WHERE b.run_id = c.run_id) AS steps,
                   (SELECT MAX(b.rho_max) FROM step_blocks b WHERE b.run_id = c.run_id) AS rho_max,
                   (SELECT MAX(b.rho_pre_max) FROM step_blocks b WHERE b.run_id = c.run_id) AS rho_pre_max,
{counts}                   (SELECT CAST(TOTAL(b.sum_skip) AS INTEGER) FROM step_blocks b WHERE b.run_id = c.run_id) AS skips,
                   (SELECT MIN(b.pos_min) FROM step_blocks b WHERE b.run_id = c.run_id) AS pos_min,
                   (SELECT CAST(TOTAL(b.pos_negative) AS INTEGER) FROM step_blocks b WHERE b.run_id = c.run_id
                   ) AS pos_negative_steps,
                   (SELECT COUNT(*) FROM epochs_of p WHERE p.run_id = c.run_id) AS epochs_with_steps,
                   (SELECT p.ratio_mean FROM epochs_of p WHERE p.run_id = c.run_id ORDER BY p.epoch LIMIT 1
                   ) AS ratio_first_epoch,
                   (SELECT p.ratio_mean FROM epochs_of p WHERE p.run_id = c.run_id ORDER BY p.epoch DESC LIMIT 1
                   ) AS ratio_last_epoch,
                   (SELECT COUNT(*) FROM events v WHERE v.run_id = c.run_id
                                                    AND v.kind = 'collapse_warning') AS collapse_warnings
            FROM caps c
{_STAGED_FLAGS}"""


# v3 (migration 9): the same columns from step_blocks (store/step_blocks.py: the steps summed per
# 64), so a view reads 1/64 of the rows. Means are sums over counts, as AVG() computes them.
_BLOCK_RHO_OVER = """(
                        SELECT TOTAL(CASE WHEN b.{col}_max <= g.cap + {tol} THEN 0 ELSE (
                            SELECT COUNT(*) FROM steps s WHERE s.run_id = b.run_id
                                                          AND s.step BETWEEN b.first_step AND b.last_step
                                                          AND s.epoch = b.epoch AND s.{col} > g.cap + {tol}) END)
                        FROM step_blocks b JOIN stages g ON g.run_id = b.run_id
                                                       AND b.epoch >= g.from_epoch AND b.epoch < g.until_epoch
                        WHERE b.run_id = c.run_id)"""
VIEWS_V3: dict[str, str] = VIEWS_V2 | {
    "v_epoch_steps": """
        SELECT run_id, epoch,
               SUM(steps) AS steps, MIN(first_step) AS first_step, MAX(last_step) AS last_step,
               CAST(TOTAL(sum_skip) AS INTEGER) AS skips,
               CAST(TOTAL(sum_attenuate) AS INTEGER) AS attenuations,
               SUM(sum_ratio) / SUM(steps) AS ratio_mean, SUM(sum_pos) / SUM(steps) AS pos_mean,
               SUM(sum_neg) / SUM(steps) AS neg_mean,
               MIN(pos_min) AS pos_min, MAX(rho_max) AS rho_max, MAX(rho_pre_max) AS rho_pre_max
        FROM step_blocks
        GROUP BY run_id, epoch""",

    "v_run_summary": f"""
{_SUMMARY_HEAD}               (SELECT COALESCE(SUM(b.steps), 0) FROM step_blocks b WHERE b.run_id = r.id) AS steps,
               (SELECT SUM(b.sum_skip) / SUM(b.steps) FROM step_blocks b WHERE b.run_id = r.id) AS skip_rate,
               (SELECT MAX(b.rho_max) FROM step_blocks b WHERE b.run_id = r.id) AS rho_max,
               (SELECT MAX(b.rho_pre_max) FROM step_blocks b WHERE b.run_id = r.id) AS rho_pre_max,
               (SELECT MIN(b.pos_min) FROM step_blocks b WHERE b.run_id = r.id) AS pos_min,
{_SUMMARY_FROM}""",

    # Steps over the cap in force are counted in the steps table only within blocks whose
    # maximum is over it: a run that held its cap reads none.
    "v_guardrail_checks": _guardrail_checks(
        f"""                   CAST({_BLOCK_RHO_OVER.format(col="rho", tol=RHO_CAP_TOLERANCE)} AS INTEGER) AS rho_over_cap_steps,
                   CAST({_BLOCK_RHO_OVER.format(col="rho_pre", tol=RHO_CAP_TOLERANCE)} AS INTEGER) AS rho_pre_over_cap_steps,
"""),
}


# v4 (migration 10): one definition of every count (issue 22). An attenuated step is one the
# trainer flagged (`steps.attenuate`, the guardrail's stored decision): v1–v3 re-decided it from
# rho_pre with an absolute slack while the trainer compared exactly, so a ρ_pre one float32 step
# over 0.25 was an attenuate event but not an attenuated step. Where no flag exists (ρ after the
# cap; an uncapped run against the seed's 0.25) the numbers are judged by the guardrail's own
# rule, lvmd/train/rho_cap.py: over when ρ > cap + cap / 2^20, the expression written out here
# (a test holds RHO_CAP_RTOL_DIVISOR to rho_cap's). rho_pre_over_cap_steps keeps its name and now
# equals attenuated_steps; an uncapped run (v1) has ρ_pre = ρ, judged in rho_over_cap_steps.
RHO_CAP_RTOL_DIVISOR = 1048576     # baked into VIEWS_V4: never change it
_OVER_CAP_V4 = f"""(
                        SELECT TOTAL(CASE WHEN b.rho_max <= g.cap + g.cap / {RHO_CAP_RTOL_DIVISOR}.0 THEN 0 ELSE (
                            SELECT COUNT(*) FROM steps s WHERE s.run_id = b.run_id
                                                          AND s.step BETWEEN b.first_step AND b.last_step
                                                          AND s.epoch = b.epoch AND s.rho > g.cap + g.cap / {RHO_CAP_RTOL_DIVISOR}.0) END)
                        FROM step_blocks b JOIN stages g ON g.run_id = b.run_id
                                                       AND b.epoch >= g.from_epoch AND b.epoch < g.until_epoch
                        WHERE b.run_id = c.run_id)"""
_ATTENUATED = "(SELECT CAST(TOTAL(b.sum_attenuate) AS INTEGER) FROM step_blocks b WHERE b.run_id = c.run_id)"
VIEWS_V4: dict[str, str] = VIEWS_V3 | {
    "v_guardrail_checks": _guardrail_checks(
        f"""                   CAST({_OVER_CAP_V4} AS INTEGER) AS rho_over_cap_steps,
                   {_ATTENUATED} AS rho_pre_over_cap_steps,
                   {_ATTENUATED} AS attenuated_steps,
"""),
}

def create_views(conn: sqlite3.Connection, views: Mapping[str, str]) -> None:
    """(Re)create each view, in order: later ones may select from earlier ones."""
    for name in reversed(list(views)):
        conn.execute(f"DROP VIEW IF EXISTS {name}")
    for name, select in views.items():
        conn.execute(f"CREATE VIEW {name} AS {select.strip()}")


# Sweeps (migration 7): one row per sweep and configuration. The numbers are over the
# configuration's *finished* runs (one per seed), from v_run_summary's last-epoch values; the
# 95 % intervals need Student's t, which `lvmd compare --sweep` applies to margin_sd / sqrt(n).
# sqrt() is SQLite's math function (3.35+, on in Python's and the CLI's builds).
VIEWS_SWEEPS: dict[str, str] = {
    "v_sweep_summary": """
        WITH members AS (
            SELECT r.sweep_id, r.sweep_config, r.sweep_seed, s.*
            FROM runs r JOIN v_run_summary s ON s.run_id = r.id
            WHERE r.sweep_id IS NOT NULL
        ), done AS (
            SELECT * FROM members WHERE state = 'finished'
        )
        SELECT w.id AS sweep_id, w.name AS sweep, w.search, w.state AS sweep_state,
               c.label AS config, c.trial, c.state AS config_state, c.objective, c.reason,
               (SELECT COUNT(*) FROM members m WHERE m.sweep_id = w.id AND m.sweep_config = c.label) AS runs,
               COUNT(d.run_id) AS finished,
               GROUP_CONCAT(d.sweep_seed, ',') AS seeds,
               AVG(d.last_margin) AS margin_mean,
               CASE WHEN COUNT(d.last_margin) > 1 THEN sqrt(MAX(0, (SUM(d.last_margin * d.last_margin)
                    - SUM(d.last_margin) * SUM(d.last_margin) / COUNT(d.last_margin)) / (COUNT(d.last_margin) - 1)))
               END AS margin_sd,
               MIN(d.last_margin) AS margin_min, MAX(d.last_margin) AS margin_max,
               AVG(d.last_val_cos) AS val_cos_mean, AVG(d.last_r_at_5) AS r_at_5_mean,
               AVG(d.last_gates_passed) AS gates_mean, AVG(d.skip_rate) AS skip_rate_mean,
               MAX(d.rho_max) AS rho_max
        FROM sweeps w
        JOIN sweep_configs c ON c.sweep_id = w.id
        LEFT JOIN done d ON d.sweep_id = w.id AND d.sweep_config = c.label
        GROUP BY w.id, c.label
        ORDER BY w.id, c.created_at, c.label""",
}
