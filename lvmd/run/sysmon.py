"""The daemon's view of its machine, sampled on a thread every SAMPLE_SECONDS into
`system_samples` (store/system.py) so the TUI and SQL see it: this process's CPU and memory, the
host's, and each NVIDIA GPU's utilisation, memory and temperature through NVIDIA's own
nvidia-ml-py (none on a machine without the driver: the rows say only CPU). The thread costs the
training loop nothing per step: it wakes every few seconds, reads /proc and NVML, and writes one
short transaction on its own connection."""
from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

from store.db import connect, lost_reason, park
from store.system import insert_samples

log = logging.getLogger(__name__)
SAMPLE_SECONDS = 5.0


def _host_cpu() -> tuple[int, int]:
    """(busy, total) jiffies of all cores since boot."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


def _meminfo() -> dict[str, float]:
    out = {}
    with open("/proc/meminfo") as fh:
        for line in fh:
            key, value = line.split(":", 1)
            out[key] = float(value.split()[0]) * 1024
    return out


def _rss() -> float:
    with open("/proc/self/statm") as fh:
        return float(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Gpus:
    """NVML handles, or none (no nvidia-ml-py, no driver, no device): then sample() is []."""

    def __init__(self) -> None:
        self.nvml = None
        self.handles: list = []
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, …: a CPU machine
            log.debug("no GPU sampling: %s", exc)

    def sample(self) -> list[dict]:
        rows = []
        for i, h in enumerate(self.handles):
            nv = self.nvml
            try:
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                name = nv.nvmlDeviceGetName(h)
                rows.append({"device": f"gpu{i}", "name": name.decode() if isinstance(name, bytes) else name,
                             "util": float(nv.nvmlDeviceGetUtilizationRates(h).gpu),
                             "mem_used": float(mem.used), "mem_total": float(mem.total),
                             "temp_c": float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU))})
            except Exception as exc:  # one device failing must not stop the others or the run
                rows.append({"device": f"gpu{i}", "name": f"error: {exc}"})
        return rows

    def close(self) -> None:
        if self.nvml is not None:
            try:
                self.nvml.nvmlShutdown()
            except Exception:
                pass


class SystemSampler:
    def __init__(self, db: str | Path, run_id: int, *, every: float = SAMPLE_SECONDS) -> None:
        self.db, self.run_id, self.every = db, run_id, every
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lvmd-sysmon", daemon=True)

    def start(self) -> "SystemSampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        gpus = Gpus()
        conn = None
        last = (time.monotonic(), time.process_time(), _host_cpu())
        try:
            conn = connect(self.db)
            while not self._stop.wait(self.every):
                if lost_reason(self.db) is not None:    # the file at the path is not ours any more
                    break
                try:
                    now = (time.monotonic(), time.process_time(), _host_cpu())
                    insert_samples(conn, self.run_id, time.time(), self.sample(last, now) + gpus.sample())
                    last = now
                except Exception as exc:  # a locked or full database: skip this sample, keep training
                    log.warning("system sample not written: %s", exc)
        except Exception as exc:
            log.warning("system sampling off: %s", exc)
        finally:
            gpus.close()
            if conn is not None:
                park(conn) if lost_reason(self.db) is not None else conn.close()

    @staticmethod
    def sample(last: tuple, now: tuple) -> list[dict]:
        (w0, p0, (b0, t0)), (w1, p1, (b1, t1)) = last, now
        mem = _meminfo()
        total = mem.get("MemTotal")
        used = None if total is None else total - mem.get("MemAvailable", mem.get("MemFree", 0.0))
        return [{"device": "process", "name": f"pid {os.getpid()}", "util": 100 * (p1 - p0) / max(w1 - w0, 1e-9),
                 "mem_used": _rss(), "mem_total": total},
                {"device": "host", "name": f"{os.cpu_count()} cores", "util": 100 * (b1 - b0) / max(t1 - t0, 1),
                 "mem_used": used, "mem_total": total}]
