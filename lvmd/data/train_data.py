"""The files a run trains on, loaded and cross-checked before anything is written (numpy only,
so a bad file is reported before torch is imported)."""
from __future__ import annotations

from dataclasses import dataclass

from lvmd.config import RunConfig, check_fits
from lvmd.data import formats as datamod
from lvmd.data import mapped
from lvmd.data.formats import Articles, DataError, Sequences
from store.paths import not_regular


@dataclass
class TrainData:
    train: Sequences
    val: Sequences
    ood: Sequences | None = None
    articles: Articles | None = None
    ood_articles: Articles | None = None


def load_train_data(cfg: RunConfig) -> TrainData:
    """Load and cross-check every file the config names (one-line DataError on problems)."""
    d = cfg.data
    for key in ("train", "val"):
        if not getattr(d, key):
            raise DataError(f"data.{key}: not set; give a sequence NPZ path in the config or as data.{key}=PATH")
    for key in ("train", "val", "ood", "articles", "ood_articles"):   # a FIFO would block the loaders
        if getattr(d, key) and (why := not_regular(getattr(d, key))) is not None:
            raise DataError(f"data.{key}: {why}")
    # streaming hook: the train split is a memory map when its file allows (lvmd/data/mapped.py),
    # so a split larger than memory can be streamed; the numbers are the same either way
    train = mapped.load_train_split(d.train, allow_pickle=d.allow_pickle, max_rows=d.max_train)
    val = datamod.load_sequences(d.val, allow_pickle=d.allow_pickle)
    ood = datamod.load_sequences(d.ood, allow_pickle=d.allow_pickle) if d.ood else None
    articles = datamod.load_articles(d.articles) if d.articles else None
    ood_articles = datamod.load_articles(d.ood_articles) if d.ood_articles else None
    for seqs in (val, ood):
        if seqs is not None and (seqs.dim, seqs.context_len) != (train.dim, train.context_len):
            raise DataError(f"{seqs.path}: T={seqs.context_len}, D={seqs.dim} but {train.path} has "
                            f"T={train.context_len}, D={train.dim}")
    for arts in (articles, ood_articles):
        if arts is not None and arts.dim != train.dim:
            raise DataError(f"{arts.path}: D={arts.dim} but {train.path} has D={train.dim}")
    check_fits(cfg, len(train))                 # batch and total steps within what the data allow
    return TrainData(train, val, ood, articles, ood_articles)
