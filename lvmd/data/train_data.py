"""The files a run trains on, loaded and cross-checked before anything is written (numpy only,
so a bad file is reported before torch is imported; the train split's rows beyond a sample are
checked as training first draws them, lvmd/data/mapped.py)."""
from __future__ import annotations

from dataclasses import dataclass

from lvmd.config import RunConfig, check_fits
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
    full_check: mapped.FullCheck | None = None    # check="background": the rest of val/OOD/banks

    def wait_checked(self) -> None:
        """Every row of val, OOD and the banks checked (joins a background check; its DataError)."""
        if self.full_check is not None:
            self.full_check.wait()


CHECKS = ("now", "background", "sample")


def load_train_data(cfg: RunConfig, *, check: str = "now") -> TrainData:
    """Load and cross-check every file the config names (one-line DataError on problems).

    The train split is always checked on a sample now and row by row as training draws it.
    The files read whole (val, OOD, banks) are checked: "now", chunk by chunk; "background",
    on a sample now and whole on a helper thread (the process that trains: the Trainer waits
    for it before its first step, so the check runs beside the import of torch); "sample", on a
    sample only (a process that only vets the files before another trains on them: lvmd start)."""
    if check not in CHECKS:
        raise ValueError(f"check={check!r}")
    d = cfg.data
    for key in ("train", "val"):
        if not getattr(d, key):
            raise DataError(f"data.{key}: not set; give a sequence NPZ path in the config or as data.{key}=PATH")
    for key in ("train", "val", "ood", "articles", "ood_articles"):   # a FIFO would block the loaders
        if getattr(d, key) and (why := not_regular(getattr(d, key))) is not None:
            raise DataError(f"data.{key}: {why}")
    # streaming hook: every file is a memory map when it allows (lvmd/data/mapped.py): the train
    # split's first max_train rows only, a sample checked now and the rest as batches draw them,
    # so a split larger than memory can be streamed; the numbers are the same either way
    deferred = None if check == "now" else []
    train = mapped.load_train_split(d.train, allow_pickle=d.allow_pickle, max_rows=d.max_train)
    val = mapped.load_sequences(d.val, allow_pickle=d.allow_pickle, deferred=deferred)
    ood = mapped.load_sequences(d.ood, allow_pickle=d.allow_pickle, deferred=deferred) if d.ood else None
    articles = mapped.load_articles(d.articles, deferred=deferred) if d.articles else None
    ood_articles = mapped.load_articles(d.ood_articles, deferred=deferred) if d.ood_articles else None
    for seqs in (val, ood):
        if seqs is not None and (seqs.dim, seqs.context_len) != (train.dim, train.context_len):
            raise DataError(f"{seqs.path}: T={seqs.context_len}, D={seqs.dim} but {train.path} has "
                            f"T={train.context_len}, D={train.dim}")
    for arts in (articles, ood_articles):
        if arts is not None and arts.dim != train.dim:
            raise DataError(f"{arts.path}: D={arts.dim} but {train.path} has D={train.dim}")
    check_fits(cfg, len(train))                 # batch and total steps within what the data allow
    full = mapped.FullCheck(deferred) if check == "background" and deferred else None
    return TrainData(train, val, ood, articles, ood_articles, full)
