"""The README's picture of `lvmd tui --web`: a real headless browser (Debian's chromium) on the web
view of a live demo run, driven over the DevTools protocol, saved as a PNG.

  .venv/bin/python scripts/web_screenshot.py [--out lvmd/docs/web.png] [--db DB --run RUN]

Without --db it starts the demo (lvmd/demo/demo.toml, 3 epochs) in a fresh database under a
temporary folder, waits for its second 5CAT evaluation, shoots the run screen while epoch 3
trains, then stops the run and the server. Needs the web extra (textual-serve, which brings the
aiohttp client this script speaks DevTools with) and chromium (`apt-get install -y chromium`).
Exits non-zero, saving nothing, when the page never shows the app.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
LVMD = [sys.executable, "-m", "lvmd"]
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--remote-debugging-port=0"]


def wait(predicate, timeout: float, what: str, interval: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise SystemExit(f"web_screenshot: timed out after {timeout:.0f} s waiting for {what}")


def count(db: Path, sql: str, *args) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchone()[0] or 0
    finally:
        conn.close()


def start_demo(db: Path, epochs: int) -> int:
    demo = ROOT / "lvmd" / "demo" / "wiki-minilm"
    if not (demo / "train.npz").exists():
        subprocess.run([*LVMD, "data", "sequences", str(demo)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    out = subprocess.run([*LVMD, "start", str(ROOT / "lvmd/demo/demo.toml"), "--db", str(db), "name=demo-wiki-v2.1",
                          f"train.epochs={epochs}"], check=True, cwd=ROOT, capture_output=True, text=True).stdout
    return int(re.match(r"run (\d+) ", out)[1])


class DevTools:
    """Just enough of the Chrome DevTools protocol: one call at a time, events skipped."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.ids = ws, itertools.count(1)

    async def __call__(self, method: str, **params) -> dict:
        call = next(self.ids)
        await self.ws.send_json({"id": call, "method": method, "params": params})
        async for msg in self.ws:
            answer = msg.json()
            if answer.get("id") == call:
                if "error" in answer:
                    raise SystemExit(f"web_screenshot: {method}: {answer['error']}")
                return answer.get("result", {})
        raise SystemExit("web_screenshot: the browser closed the DevTools connection")


async def shoot(url: str, out: Path, *, width: int, height: int, settle: float) -> None:
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("web_screenshot: no chromium here; install it: apt-get install -y chromium")
    with tempfile.TemporaryDirectory(prefix="lvmd-chromium-") as profile:
        browser = await asyncio.create_subprocess_exec(
            chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            port = None
            while port is None:
                line = (await asyncio.wait_for(browser.stderr.readline(), 60)).decode()
                if not line:
                    raise SystemExit("web_screenshot: chromium exited before it listened")
                if found := re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line):
                    port = int(found[1])
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://127.0.0.1:{port}/json/list") as reply:
                    page = next(t for t in await reply.json() if t["type"] == "page")
                async with session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    cdp = DevTools(ws)
                    await cdp("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                              mobile=False)
                    await cdp("Page.navigate", url=url)
                    deadline = time.monotonic() + 120
                    # textual.js marks the body once the app's first bytes arrived over the websocket
                    probe = "!!document.body && document.body.classList.contains('-first-byte')"
                    while not (await cdp("Runtime.evaluate", expression=probe))["result"]["value"]:
                        if time.monotonic() > deadline:
                            raise SystemExit("web_screenshot: the page never showed the app")
                        await asyncio.sleep(0.5)
                    await asyncio.sleep(settle)             # charts fill in as the app reads the run
                    shot = await cdp("Page.captureScreenshot", format="png")
            out.write_bytes(base64.b64decode(shot["data"]))
        finally:
            if browser.returncode is None:
                browser.terminate()
                await browser.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "lvmd" / "docs" / "web.png")
    parser.add_argument("--db", type=Path, help="an existing database (default: a fresh demo run)")
    parser.add_argument("--run", help="with --db: the run to open")
    parser.add_argument("--epochs", type=int, default=3, help="the demo's epochs (shot after the one before last)")
    parser.add_argument("--size", default="1500x900", help="browser window, WIDTHxHEIGHT pixels")
    parser.add_argument("--settle", type=float, default=12.0, help="seconds between the app's first bytes and the shot")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    tmp = Path(tempfile.mkdtemp(prefix="lvmd-web-shot-"))
    run_id, db = args.run, args.db
    server = None
    try:
        if db is None:
            db = tmp / "lvmd.db"
            run_id = str(start_demo(db, args.epochs))
            print(f"demo run {run_id} training in {db}; waiting for its 5CAT of epoch {args.epochs - 1}", flush=True)
            wait(lambda: count(db, "SELECT COUNT(*) FROM evals WHERE run_id = ? AND gates_passed IS NOT NULL",
                               int(run_id)) >= args.epochs - 1, 1800, "the demo's evaluations")
        server = subprocess.Popen([*LVMD, "tui", "--web", str(db), "--port", "0", *(["--run", run_id] if run_id else [])],
                                  cwd=ROOT, stdout=subprocess.PIPE, text=True)
        found = re.search(r"at (http://\S+/) ", server.stdout.readline())
        if not found:
            raise SystemExit("web_screenshot: the server did not start")
        asyncio.run(shoot(found[1], args.out, width=width, height=height, settle=args.settle))
        print(f"saved {args.out} ({args.out.stat().st_size} bytes) from {found[1]}")
    finally:
        if server is not None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        if args.db is None and run_id is not None:
            subprocess.run([*LVMD, "stop", run_id, "--db", str(db)], cwd=ROOT, capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
