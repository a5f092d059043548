"""The SQL side of the telemetry sink: one connection, one thread, batched transactions.

The trainer hands over whole blocks of step rows; this thread commits everything that arrived
within `flush_seconds` (0.5 s by default) in ONE transaction, so the hot path never waits on
SQLite and a reader sees at most two commits a second. Errors are kept and re-raised in the
caller on its next call, so telemetry is never dropped silently.

Before each commit the writer checks that the path it opened is still the file it holds, and
that the file's -wal is still the one SQLite writes (DatabaseWatch). A database moved or
replaced under a live daemon, or a -wal deleted by hand, sets `lost`: the daemon stops at its
next step boundary with a checkpoint. Until then its commits go to the file it opened (never to
a file now at the path), and at close its -wal is checkpointed into that file and emptied, so it
cannot be replayed onto another database; the connection is then parked, not closed, because
SQLite's close deletes -wal and -shm by path (store.db.park).
"""
from __future__ import annotations

import json
import os
import queue
import sqlite3
import threading
import time
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from store.db import BUSY_TIMEOUT_MS, connect, mark_lost, park
from store.holdpoints import hold
from store.schema import STEP_COLUMNS

_CLOSE = object()
LOST_TRUNCATE_WAIT_MS = 5000     # at close after the database was lost: how long TRUNCATE waits for readers
CHECKPOINT_SECONDS = 2.0         # PASSIVE checkpoint cadence of the writer thread
TRUNCATE_BYTES = 4 * 1024 * 1024  # a -wal larger than this is reset with TRUNCATE
TRUNCATE_WAIT_MS = 100           # how long a TRUNCATE may wait for readers before it gives up
_STEP_INSERT = f"INSERT INTO steps ({', '.join(STEP_COLUMNS)}) VALUES ({', '.join('?' * len(STEP_COLUMNS))})"


class SqliteSink:
    """Implements the trainer's Sink protocol (lvmd/train/sink.py) on an SQLite file."""

    def __init__(self, path: str | Path, run_id: int, *, flush_seconds: float = 0.5):
        self.path = Path(path)
        self.run_id = run_id
        self.flush_seconds = flush_seconds
        self._conn = connect(self.path)
        self.watch = DatabaseWatch(self.path)
        self.lost: str | None = None      # why the database at `path` is no longer the one we opened
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._next_checkpoint = time.monotonic() + CHECKPOINT_SECONDS
        self.truncations = 0      # TRUNCATE checkpoints that reset the -wal (soak script reads it)
        self._thread = threading.Thread(target=self._loop, name="lvmd-sqlite-writer", daemon=True)
        self._thread.start()

    # -- the Sink protocol --------------------------------------------------------------
    def log_steps(self, rows: Sequence[Sequence[Any]]) -> None:
        """rows: tuples in STEP_COLUMNS order without the leading run_id."""
        self._raise_pending()
        self._queue.put(("steps", [(self.run_id, *r) for r in rows]))

    def event(self, kind: str, *, step: int | None = None, epoch: int | None = None,
              detail: dict | None = None, t: float | None = None) -> None:
        self._raise_pending()
        self._queue.put(("sql", "INSERT INTO events (run_id, step, epoch, t, kind, detail) VALUES (?,?,?,?,?,?)",
                         (self.run_id, step, epoch, t or time.time(), kind,
                          json.dumps(detail, sort_keys=True, allow_nan=False, default=str) if detail else None)))

    def epoch(self, row: dict) -> None:
        self._raise_pending()
        row = {"run_id": self.run_id, **row}
        cols = ", ".join(row)
        self._queue.put(("sql", f"INSERT OR REPLACE INTO epochs ({cols}) VALUES ({', '.join('?' * len(row))})",
                         tuple(row.values())))

    def update_run(self, **fields: Any) -> None:
        self._raise_pending()
        fields.setdefault("updated_at", time.time())
        cols = ", ".join(f"{k} = ?" for k in fields)
        self._queue.put(("sql", f"UPDATE runs SET {cols} WHERE id = ?", (*fields.values(), self.run_id)))

    def write_eval(self, eval_row: dict, gates: list[dict], metrics: list[dict]) -> int:
        """One 5CAT result (evals + gates + eval_metrics rows) in one transaction; its id."""
        from store.evals import insert_eval

        return self.call(lambda conn: insert_eval(conn, self.run_id, eval_row, gates, metrics))

    def call(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        """Run fn(conn) on the writer thread inside the next commit and return its result.
        Everything queued before it is committed together with it (ordering is kept)."""
        self._raise_pending()
        fut: Future = Future()
        self._queue.put(("call", fn, fut))
        try:
            return fut.result()
        except Exception as exc:
            raise RuntimeError(f"{self.path}: telemetry write failed: {exc}") from exc

    def flush(self) -> None:
        """Block until everything handed over so far is committed."""
        self.call(lambda conn: None)

    def check_database(self) -> str | None:
        """`lost`, looking now as well (the writer looks before each commit)."""
        if self.lost is None:
            lost = self.watch.changed()
            if lost is not None:
                self.lost = lost
                mark_lost(self.path, lost)
        return self.lost

    def close(self) -> None:
        if self._thread.is_alive():
            self._queue.put(_CLOSE)
            self._thread.join()
        if self.lost is None:
            self._conn.close()
        else:
            self._empty_wal()
            park(self._conn)
        self._raise_pending()

    def _empty_wal(self) -> None:
        """What we committed goes into the file we opened, and its -wal is emptied (TRUNCATE),
        so no other file at the path ever reads our frames as its own."""
        try:
            self._conn.execute(f"PRAGMA busy_timeout={LOST_TRUNCATE_WAIT_MS}")
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        except sqlite3.Error:
            pass

    # -- the writer thread --------------------------------------------------------------
    def _raise_pending(self) -> None:
        """A commit that failed breaks the sink for good: every later call raises, in whichever
        thread makes it. (Raising it once let the heartbeat thread of a 5CAT take the error and
        the training loop go on with a hole in its telemetry, issue 20.9.)"""
        err = self._error
        if err is not None:
            raise RuntimeError(f"{self.path}: telemetry write failed: {_words(err)}") from err

    def _loop(self) -> None:
        pending: list = []
        deadline: float | None = None
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                item = self._queue.get(timeout=timeout)
            except queue.Empty:
                item = None
            if item is _CLOSE:
                self._commit(pending)
                return
            if item is not None:
                pending.append(item)
                deadline = deadline or time.monotonic() + self.flush_seconds
            if pending and (item is not None and item[0] == "call" or time.monotonic() >= (deadline or 0)):
                self._commit(pending)
                pending, deadline = [], None

    def _commit(self, items: Iterable) -> None:
        items = list(items)
        if not items:
            return
        calls: list[tuple[Future, Any]] = []
        failed: list[tuple[Future, BaseException]] = []
        conn = self._conn
        self.check_database()              # once lost, nothing in this process opens the path again
        if self._error is not None:      # broken: nothing after a lost batch may land (no holes)
            for item in items:
                if item[0] == "call" and not item[2].done():
                    item[2].set_exception(self._error)
            return
        try:
            conn.execute("BEGIN IMMEDIATE")
            for item in items:
                if item[0] == "steps":
                    conn.executemany(_STEP_INSERT, item[1])
                elif item[0] == "sql":
                    conn.execute(item[1], item[2])
                else:
                    self._run_call(conn, item, calls, failed)
            hold("commit")                   # crash tests: a kill -9 inside the transaction
            conn.execute("COMMIT")
        except BaseException as exc:  # keep the error for the caller; never lose it silently
            if conn.in_transaction:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            for item in items:
                if item[0] == "call" and not item[2].done():
                    item[2].set_exception(exc)
            self._error = exc            # and every later call raises it too
            return
        for fut, result in calls:
            fut.set_result(result)
        for fut, exc in failed:
            fut.set_exception(exc)
        self._maybe_checkpoint()

    @staticmethod
    def _run_call(conn: sqlite3.Connection, item: tuple, calls: list, failed: list) -> None:
        """One call in its own savepoint: if it raises, only its own writes are undone, never
        the step rows and events queued with it. An error that ended the whole transaction
        (SQLITE_FULL, I/O) fails the batch instead."""
        _, fn, fut = item
        conn.execute("SAVEPOINT lvmd_call")
        try:
            result = fn(conn)
        except Exception as exc:
            if not conn.in_transaction:
                raise
            conn.execute("ROLLBACK TO lvmd_call")
            conn.execute("RELEASE lvmd_call")
            failed.append((fut, exc))
            return
        conn.execute("RELEASE lvmd_call")
        calls.append((fut, result))

    # -- keeping the -wal small -------------------------------------------------------------
    def _maybe_checkpoint(self) -> None:
        """Every CHECKPOINT_SECONDS a PASSIVE checkpoint (never waits); when the -wal has grown
        past TRUNCATE_BYTES, a TRUNCATE that waits at most TRUNCATE_WAIT_MS for readers. SQLite's
        own auto-checkpoint cannot reset the -wal while readers keep arriving, so without this
        the file grows for as long as a TUI or a status loop watches (issue 13 K)."""
        now = time.monotonic()
        if now < self._next_checkpoint or self.lost is not None:
            return
        self._next_checkpoint = now + CHECKPOINT_SECONDS
        conn = self._conn
        try:
            conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
            wal = Path(f"{self.path}-wal")
            if wal.exists() and wal.stat().st_size > TRUNCATE_BYTES:
                conn.execute(f"PRAGMA busy_timeout={TRUNCATE_WAIT_MS}")
                try:
                    busy = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
                finally:
                    conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
                self.truncations += 0 if busy else 1
        except (sqlite3.Error, OSError) as exc:
            # a busy checkpoint is retried at the next cadence; telemetry never waits on it. A
            # full disk is not retried: commits may still land in the reused -wal for a while,
            # but the file cannot grow, so the run stops now and says why (issue 20.9)
            if getattr(exc, "sqlite_errorname", "") == "SQLITE_FULL" or getattr(exc, "errno", None) == 28:
                self._error = exc


class DatabaseWatch:
    """Is the file at `path` still the one this process opened, with its own -wal? Two stats,
    taken before each commit (twice a second): the database's device and inode, and the -wal's
    (SQLite keeps the -wal while any connection is open, so ours is never legitimately gone)."""

    def __init__(self, path: Path):
        self.path = path
        self.wal = Path(f"{path}-wal")
        self.db_id = self._ident(path)
        self.wal_id = self._ident(self.wal)

    @staticmethod
    def _ident(path: Path) -> tuple[int, int] | None:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return st.st_dev, st.st_ino

    def changed(self) -> str | None:
        """One line saying what changed, or None."""
        now = self._ident(self.path)
        if now is None:
            return f"{self.path} was moved or deleted under the daemon"
        if self.db_id is not None and now != self.db_id:
            return f"{self.path} was replaced by another file under the daemon (inode {self.db_id[1]} → {now[1]})"
        wal = self._ident(self.wal)
        if self.wal_id is None:
            self.wal_id = wal
        elif wal is None:
            return f"{self.wal} was deleted under the daemon"
        elif wal != self.wal_id:
            return f"{self.wal} was replaced under the daemon (inode {self.wal_id[1]} → {wal[1]})"
        return None


def _words(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
