"""`lvmd tui --web`: the real server (a `python -m lvmd tui --web` subprocess on a free port) over
HTTP and its websocket, as a browser talks to it: the page, the app's first screen, a pause key
that a read-only server refuses and a --control server sends, every app process ending with the
server, a hostile database path, other sites' pages refused; the refusals, each one line."""
from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import aiohttp
import pytest

from conftest import ROOT, query, wait_for
from fixture_runs import write_run
from lvmd.cli.main import main
from store.runs import pid_alive

ANSI = re.compile(r"\x1b(\[[0-9;?<>=!]*[ -/]*[@-~]|\][^\x07\x1b]*(\x07|\x1b\\)|[()][0-9A-Za-z]|[=>78NMcD])")


def one_line_error(proc, *words: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1 and lines[0].startswith("lvmd: error:"), proc.stderr
    assert all(w in lines[0] for w in words), lines[0]
    assert proc.stdout == ""                                    # nothing served
    return lines[0]


def read_line(stream, timeout: float) -> str:
    with selectors.DefaultSelector() as sel:
        sel.register(stream, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise AssertionError(f"no line within {timeout} s")
    return stream.readline()


@contextlib.contextmanager
def served(db: Path, *args: str, cwd: Path = ROOT):
    """`lvmd tui --web DB --port 0 ARGS` running; yields (process, port)."""
    proc = subprocess.Popen([sys.executable, "-m", "lvmd", "tui", "--web", str(db), "--port", "0", *args],
                            cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = read_line(proc.stdout, 120)
        match = re.search(r"at http://[^ ]*:(\d+)/ ", line)
        assert match, (line, proc.stderr.read() if proc.poll() is not None else "")
        yield proc, int(match[1])
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def app_pids(server_pid: int) -> list[int]:
    """The server's child processes: one app per open view."""
    with open(f"/proc/{server_pid}/task/{server_pid}/children") as fh:
        return [int(p) for p in fh.read().split()]


class View:
    """One browser's websocket: keys in, the app's screen out (as text, escape codes removed)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws, self.text = ws, ""
        self._decode = codecs.getincrementaldecoder("utf-8")("replace").decode

    async def until(self, needle: str, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.text:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{needle!r} never arrived; the screen's end: {self.text[-1500:]!r}")
            try:     # short waits: aiohttp restarts a receive's timeout at each of the server's pings
                msg = await self.ws.receive(timeout=min(left, 5.0))
            except asyncio.TimeoutError:
                continue
            if msg.type == aiohttp.WSMsgType.BINARY:
                self.text += ANSI.sub("", self._decode(msg.data))
            elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                raise AssertionError(f"the view closed before {needle!r} arrived")

    async def press(self, key: str) -> None:
        await self.ws.send_json(["stdin", key])


@contextlib.asynccontextmanager
async def view(session: aiohttp.ClientSession, port: int, **headers: str):
    async with session.ws_connect(f"ws://127.0.0.1:{port}/ws?width=120&height=40", headers=headers) as ws:
        yield View(ws)


@pytest.fixture()
def live_db(tmp_path) -> Path:
    db = tmp_path / "lvmd.db"
    write_run(db, name="web-fixture", state="running")
    return db


def test_serves_the_page_and_the_apps_first_screen(live_db):
    async def browse(port: int) -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{port}/") as page:
                assert page.status == 200
                html = await page.text()
            assert f'data-session-websocket-url="ws://127.0.0.1:{port}/ws"' in html
            async with session.get(f"http://127.0.0.1:{port}/static/js/textual.js") as js:
                assert js.status == 200 and len(await js.read()) > 100_000      # xterm.js and textual's client
            async with view(session, port) as v:
                await v.until("web-fixture")                # the runs screen lists the run
                await v.until("1 runs")

    with served(live_db) as (proc, port):
        asyncio.run(browse(port))


async def press_pause(port: int, expect: str) -> None:
    async with aiohttp.ClientSession() as session, view(session, port) as v:
        await v.until("Pause")                              # the run screen's footer: the keys are live
        await v.press("p")
        await v.until(expect)


def test_a_readonly_server_ignores_the_pause_key(live_db):
    with served(live_db, "--run", "1") as (proc, port):
        asyncio.run(press_pause(port, expect="read-only: `pause` not sent"))
    assert query(live_db, "SELECT COUNT(*) FROM commands")[0][0] == 0


def test_a_control_server_sends_the_pause(live_db):
    """The other side of the read-only test: the same key through --control writes the command."""
    with served(live_db, "--run", "1", "--control") as (proc, port):
        asyncio.run(press_pause(port, expect="pause sent to run 1"))
    assert query(live_db, "SELECT verb, state, issued_by FROM commands") == [("pause", "pending", "tui")]


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_stopping_the_server_stops_every_app_it_started(live_db, how):
    async def open_views(proc: subprocess.Popen, port: int, n: int) -> list[int]:
        async with aiohttp.ClientSession() as session, contextlib.AsyncExitStack() as stack:
            views = [await stack.enter_async_context(view(session, port)) for _ in range(n)]
            for v in views:
                await v.until("web-fixture")
            pids = app_pids(proc.pid)
            assert len(pids) == n and all(pid_alive(p) for p in pids)
            proc.send_signal(how)                           # while the browsers are still connected
            await asyncio.get_running_loop().run_in_executor(None, proc.wait, 60)
            return pids

    with served(live_db) as (proc, port):
        pids = asyncio.run(open_views(proc, port, 2 if how == signal.SIGTERM else 1))
    wait_for(lambda: not any(pid_alive(p) for p in pids), 30, "every app process to end")


def test_the_database_path_is_an_argument_not_shell_text(tmp_path):
    odd = tmp_path / "a b;touch PWNED;$(touch PWNED2) -x.db"       # a shell would run both touches
    write_run(odd, name="odd-path", state="running")

    async def look(port: int) -> None:
        async with aiohttp.ClientSession() as session, view(session, port) as v:
            await v.until("odd-path")

    with served(odd, cwd=tmp_path) as (proc, port):
        asyncio.run(look(port))
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


def test_other_sites_and_other_names_are_refused(live_db):
    async def probe(port: int, proc: subprocess.Popen) -> None:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await session.ws_connect(f"ws://127.0.0.1:{port}/ws", headers={"Origin": "http://evil.example"})
            assert refused.value.status == 403
            async with session.get(f"http://127.0.0.1:{port}/", headers={"Host": f"evil.example:{port}"}) as page:
                assert page.status == 403                   # a DNS-rebinding name
            assert app_pids(proc.pid) == []                 # no app was started for them
            async with view(session, port, Origin=f"http://localhost:{port}", Host=f"localhost:{port}") as v:
                await v.until("web-fixture")                # the server's own page may

    with served(live_db) as (proc, port):
        asyncio.run(probe(port, proc))


def test_refusals_are_one_line_and_start_nothing(live_db, capsys, monkeypatch):
    def tui(*args: str) -> SimpleNamespace:        # the real entry point, in this process: it must return
        code = main(["tui", *args])
        out = capsys.readouterr()
        return SimpleNamespace(returncode=code, stdout=out.out, stderr=out.err)

    db = str(live_db)
    one_line_error(tui(db, "--web", "--host", ""), "--host ''", "every interface")
    one_line_error(tui(db, "--host", "0.0.0.0"), "--host needs --web")
    one_line_error(tui(db, "--web", "--control", "--readonly"), "--control and --readonly")
    one_line_error(tui(db, "--web", "--port", "70000"), "--port 70000")
    one_line_error(tui(str(live_db.with_name("missing.db")), "--web"), "missing.db", "no such database")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        one_line_error(tui(db, "--web", "--port", str(port)), f"127.0.0.1:{port}", "in use", "--port")
    monkeypatch.setitem(sys.modules, "textual_serve", None)       # as if the web extra were not installed
    monkeypatch.setitem(sys.modules, "textual_serve.server", None)
    one_line_error(tui(db, "--web"), "textual-serve", "pip install 'lvmd[web]'")


@pytest.mark.parametrize("control", [False, True])
def test_a_non_loopback_address_is_served_only_with_a_warning(live_db, control):
    flags = ["--host", "0.0.0.0", *(["--control"] if control else [])]
    with served(live_db, *flags) as (proc, port):
        warning = read_line(proc.stderr, 30)
    assert warning.startswith("lvmd: warning: 0.0.0.0:") and "anyone who can reach this port sees every run" in warning
    assert ("can pause, evaluate and stop them" in warning) == control
    assert ("read-only" in warning) == (not control)
    assert "ssh -L" in warning
