"""The trainer's side of 5CAT: a cheap retrieval check every epoch and the full evaluation,
written through the sink (evals + gates + eval_metrics). Errors are raised: the trainer decides.

`predict` is the trainer's closure (model in eval mode under no_grad) taking a float32 tensor
(B, T, D) on `device` (the model's) and returning (B, D) there; see lvmd.eval.fivecat.
"""
from __future__ import annotations

import time
from typing import Any, Callable

from lvmd.eval import fivecat
from lvmd.config import RunConfig
from lvmd.data.formats import Articles, Sequences
from lvmd.errors import UserError

EVAL_BATCH = 1024  # contexts per forward pass during evaluation (no gradients: far above train batch)


class Evaluator:
    def __init__(self, cfg: RunConfig, *, val: Sequences, ood: Sequences | None, articles: Articles | None,
                 ood_articles: Articles | None, sink: Any):
        self.cfg, self.sink = cfg, sink
        self.val, self.ood = val, ood
        self.articles = articles
        self.ood_articles = ood_articles if ood_articles is not None else articles
        self.profile = fivecat.load_profile(cfg.eval.profile)  # an unknown profile fails at start, not at epoch 1
        if articles is not None:  # bad data fails at start too
            fivecat.check_inputs(val, articles)
            if ood is not None:
                fivecat.check_inputs(ood, self.ood_articles)

    def epoch_check(self, predict: fivecat.Predict, *, device: Any = "cpu") -> dict[str, float]:
        """r_at_1, r_at_5, mrr of up to eval.check_samples seeded VAL rows, each ranked against all
        chunks of its own article (the same rows every epoch); {} without an articles file."""
        if self.articles is None:
            return {}
        return fivecat.retrieval_check(predict, self.val, self.articles, max_samples=self.cfg.eval.check_samples,
                                       seed=self.cfg.train.seed, batch_size=EVAL_BATCH, device=device)

    def full(self, predict: fivecat.Predict, *, trigger: str, epoch: int, step: int,
             device: Any = "cpu", between: Callable[[], None] | None = None) -> dict[str, Any]:
        """Run 5CAT, write it through the sink, return a summary:
        {eval_id, gates_passed, gates_total, verdict_3of5, verdict_all5, gates: {A..E: bool},
         margin: {VAL, OOD}, r_at_5: {VAL, OOD}} (margin is the one gate A judges: compat's +1).
        between(): the run's control, called between batches and stages (it may hold the
        evaluation while the run is paused, or raise to abandon it); the evals row's duration_s
        leaves out the time spent in it, started_at/finished_at are wall clock."""
        if self.articles is None:
            raise UserError("5CAT needs an articles file (data.articles)")
        held = 0.0

        def timed_between() -> None:
            nonlocal held
            t0 = time.monotonic()
            try:
                between()
            finally:
                held += time.monotonic() - t0

        started = time.time()
        result = fivecat.evaluate(predict, self.val, self.ood, self.articles, ood_articles=self.ood_articles,
                                  compat=self.cfg.compat, profile=self.profile,
                                  max_samples=self.cfg.eval.max_samples, seed=self.cfg.train.seed,
                                  batch_size=EVAL_BATCH, device=device,
                                  progress=lambda done, total, stage: self.sink.event(
                                      "eval_progress", step=step, epoch=epoch,
                                      detail={"done": done, "total": total, "stage": stage, "trigger": trigger}),
                                  between=None if between is None else timed_between)
        finished = time.time()
        eval_id = self.sink.write_eval(eval_row(result, trigger=trigger, epoch=epoch, step=step,
                                                started_at=started, finished_at=finished, held_s=held),
                                       result.gate_rows(), result.metric_rows())
        margin_key = "margin_+1" if result.compat == "lnsp" else "margin"
        splits = [s for s in ("VAL", "OOD") if s in result.metrics]
        return {"eval_id": eval_id, "gates_passed": result.gates_passed, "gates_total": result.gates_total,
                "verdict_3of5": result.verdict_3of5, "verdict_all5": result.verdict_all5, "gates": result.gates,
                "margin": {s: result.metrics[s][margin_key] for s in splits},
                "r_at_5": {s: result.metrics[s]["r_at_5"] for s in splits}}


def eval_row(result: fivecat.FiveCatResult, *, trigger: str, epoch: int | None, step: int | None,
             started_at: float, finished_at: float, error: str | None = None, held_s: float = 0.0) -> dict[str, Any]:
    """The `evals` row (all columns but id and run_id) of one result; held_s: time it stood paused."""
    return {"epoch": epoch, "step": step, "trigger": trigger,
            "splits": ",".join(s for s in ("VAL", "OOD") if s in result.metrics),
            "profile": result.profile, "compat": result.compat, "max_samples": result.max_samples,
            "started_at": started_at, "finished_at": finished_at, "duration_s": finished_at - started_at - held_s,
            "gates_passed": result.gates_passed, "gates_total": result.gates_total,
            "verdict_3of5": int(result.verdict_3of5), "verdict_all5": int(result.verdict_all5), "error": error}
