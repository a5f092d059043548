"""`lvmd predict`: a model's next-chunk prediction for one context, shown as the nearest real
chunks of an articles bank (cosine, with their texts).

Context chunks are named either by ROW (0-based position in the bank, whose rows lvmd keeps
ordered by (article, chunk): for files lvmd writes, the row of the NPZ) or by ARTICLE:CHUNK
(the article id and chunk index stored in the file). Mixing both in one list is allowed.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from lvmd.data.formats import Articles
from lvmd.errors import UserError

# (T, D) context vectors → (D,) prediction (any norm; it is normalised here)
Predictor = Callable[[np.ndarray], np.ndarray]


@dataclass
class Neighbour:
    rank: int
    row: int
    article: int
    chunk: int
    cos: float
    role: str        # "context" (one of the given chunks), "next" (the true next chunk) or ""
    text: str


def parse_context(spec: str, articles: Articles) -> np.ndarray:
    """Bank rows of a comma-separated list of ROW or ARTICLE:CHUNK ids; one-line errors name
    the id that is not in the bank."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise UserError("--context: give chunk ids, e.g. 12,13,14,15,16 (bank rows) or 3:0,3:1,3:2,3:3,3:4")
    rows = []
    for item in items:
        if ":" in item:
            art, _, chunk = item.partition(":")
            pair = _ints(item, art, chunk)
            row = int(articles.rows_of(np.array([pair[0]]), np.array([pair[1]]))[0])
            if row < 0:
                raise UserError(f"--context: {item}: article {pair[0]} has no chunk {pair[1]} in {articles.path}")
        else:
            (row,) = _ints(item, item)
            if not 0 <= row < len(articles):
                raise UserError(f"--context: row {row} is outside the articles bank {articles.path} "
                                f"(rows 0..{len(articles) - 1})")
        rows.append(row)
    return np.asarray(rows, np.int64)


def _ints(item: str, *parts: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in parts)
    except ValueError:
        raise UserError(f"--context: {item!r} is neither a row number nor ARTICLE:CHUNK") from None


def next_row(articles: Articles, context_rows: np.ndarray) -> int | None:
    """The row of the chunk right after the last context chunk in its article, if the bank has it."""
    last = int(context_rows[-1])
    row = int(articles.rows_of(articles.article_ids[[last]], articles.chunk_ids[[last]] + 1)[0])
    return row if row >= 0 else None


def nearest(articles: Articles, prediction: np.ndarray, k: int, *, context_rows: np.ndarray | None = None
            ) -> list[Neighbour]:
    """The k bank chunks of highest cosine with the prediction, best first."""
    context_rows = np.zeros(0, np.int64) if context_rows is None else context_rows
    unit = _unit(prediction)
    scores = articles.vectors @ unit                                   # (N,): bank rows are unit vectors
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    top = top[np.argsort(-scores[top], kind="stable")]
    following = next_row(articles, context_rows) if len(context_rows) else None
    roles = {int(r): "context" for r in context_rows} | ({following: "next"} if following is not None else {})
    return [Neighbour(i + 1, int(r), int(articles.article_ids[r]), int(articles.chunk_ids[r]), float(scores[r]),
                      roles.get(int(r), ""), "" if articles.texts is None else str(articles.texts[r]))
            for i, r in enumerate(top)]


def rank_of(articles: Articles, prediction: np.ndarray, row: int) -> tuple[int, float]:
    """(1-based rank among all bank chunks, cosine) of one row; ties favour that row."""
    scores = articles.vectors @ _unit(prediction)
    return int((scores > scores[row]).sum()) + 1, float(scores[row])


def predict(predictor: Predictor, articles: Articles, *, rows: np.ndarray | None = None,
            vectors: np.ndarray | None = None, k: int = 5) -> dict:
    """The prediction for a context given as bank `rows` or as raw `vectors` (T, D) (e.g.
    embedded text), and its k nearest chunks; for bank rows also where the true next chunk
    ranks, when the context does not end its article."""
    if k < 1:
        raise UserError(f"--top-k: {k} must be >= 1")
    if (rows is None) == (vectors is None):
        raise ValueError("predict: give exactly one of rows and vectors")
    context = articles.vectors[rows] if rows is not None else np.asarray(vectors, np.float32)   # (T, D)
    if context.ndim != 2 or context.shape[1] != articles.dim:
        raise UserError(f"the context has shape {context.shape}; {articles.path} holds D={articles.dim}")
    prediction = np.asarray(predictor(context), np.float32).reshape(-1)
    if prediction.shape[0] != articles.dim:
        raise UserError(f"the model predicts D={prediction.shape[0]} but {articles.path} holds D={articles.dim}")
    in_bank = rows if rows is not None else np.zeros(0, np.int64)
    result = {"context_rows": [int(r) for r in in_bank] if rows is not None else None,
              "neighbours": [asdict(n) for n in nearest(articles, prediction, k, context_rows=in_bank)],
              "true_next": None}
    following = next_row(articles, in_bank) if len(in_bank) else None
    if following is not None:
        rank, cos = rank_of(articles, prediction, following)
        result["true_next"] = {"row": following, "rank": rank, "cos": cos}
    return result


def load_checkpoint_predictor(path: str | Path, *, device: str = "cpu", trust: bool = False
                              ) -> tuple[Predictor, dict]:
    """A Predictor over an lvmd (or the original's) checkpoint, in eval mode."""
    import torch

    from lvmd.eval.legacy import load_predictor

    model, info = load_predictor(path, device=device, trust=trust)

    @torch.no_grad()
    def run(context: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(context, np.float32))[None].to(device)  # (1, T, D)
        return model(batch)[1][0].float().cpu().numpy()                                      # (D,)

    return run, info


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.asarray(v, np.float32).reshape(-1)
    norm = float(np.linalg.norm(v))
    if not np.isfinite(norm) or norm == 0:
        raise UserError("the model's prediction is zero or not finite; nothing to compare")
    return v / norm
