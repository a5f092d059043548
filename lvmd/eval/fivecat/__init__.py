"""5CAT, the five-category evaluation of SPEC §4, vectorised; `compat="lnsp"` reproduces the
original script (tools/tests/test_5to1_alignment.py of lnsp-phase-4), defects included.

Predictions are made in batches; offset chunks come from the articles bank by index lookups,
and retrieval ranks from one matrix product per article. A gate that has no samples gets NaN
and fails. The verdict is reported under both rules: 3 of 5 gates (the seed's) and all 5 (the
original code's).

`predict` maps a float32 tensor (B, T, D) on `device` to (B, D) (a model's `(raw, unit)` tuple
is also accepted: its last element is used). The model-heavy part lives on that device: each
split's contexts are copied there once, the 9 ablated contexts per sample (C) are gathered there
and the rollout window (D) slides there; what comes back to the host is one (n, D) array of
predictions per split and the (n,) cosines of C and D, never a tensor per batch. Ranks (B),
offsets (A) and bins (E) are index arithmetic on (n, D) arrays and stay in numpy.

The package: `evaluate.py` runs it; `a_offsets` .. `e_bins` are the five tests; `profiles`
holds the thresholds, `results` the checks and verdicts, `arrays` the shared plumbing.
"""
from lvmd.eval.fivecat.a_offsets import OFFSETS, offset_name
from lvmd.eval.fivecat.arrays import Bank, Predict
from lvmd.eval.fivecat.b_retrieval import MIN_ARTICLE_CHUNKS, article_ranks
from lvmd.eval.fivecat.c_ablations import ablation_plan
from lvmd.eval.fivecat.d_rollout import HORIZON
from lvmd.eval.fivecat.e_bins import COMPAT_BINS, coherence
from lvmd.eval.fivecat.evaluate import STAGES, check_inputs, evaluate, retrieval_check
from lvmd.eval.fivecat.profiles import ABLATIONS, PROFILE_KEYS, Profile, load_profile, profile_names
from lvmd.eval.fivecat.results import E_SPLIT, GATES, FiveCatResult, GateCheck, gate_checks

__all__ = ["ABLATIONS", "STAGES", "COMPAT_BINS", "E_SPLIT", "GATES", "HORIZON", "MIN_ARTICLE_CHUNKS", "OFFSETS",
           "PROFILE_KEYS", "Bank", "FiveCatResult", "GateCheck", "Predict", "Profile", "ablation_plan",
           "article_ranks", "check_inputs", "coherence", "evaluate", "gate_checks", "load_profile",
           "offset_name", "profile_names", "retrieval_check"]
