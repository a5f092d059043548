"""textual-serve's Server, with the few changes `lvmd tui --web` needs (tui/web.py plans it):

- each app process is started from an argument vector (create_subprocess_exec), never through a
  shell: textual-serve's own AppService runs a shell command line, and a database path is data;
- the server listens on sockets bound beforehand (a port in use was refused in one line);
- a loopback server answers only requests addressed to a loopback name (a DNS-rebinding page
  cannot reach it), and a browser's websocket only from the server's own page: any site the
  user visits may open a websocket to 127.0.0.1, and the Origin header is what tells them apart;
- the page's websocket address follows the address the browser used, so a tunnel on another
  local port (`ssh -L 9000:127.0.0.1:8765 HOST`) works;
- stopping the server (Ctrl+C, SIGTERM) stops every app process it started: asked to quit,
  then terminated, then killed; a server killed outright takes them along (tui/web_app.py).
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shlex
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from textual_serve.app_service import AppService
from textual_serve.server import Server

from tui.web import WebPlan, is_loopback_name
from tui.web_app import SERVER_PID_ENV

QUIT_GRACE_S = 3.0      # an app asked to quit has this long before SIGTERM
TERM_GRACE_S = 2.0      # and this long after it before SIGKILL
log = logging.getLogger("lvmd.web")


class ArgvAppService(AppService):
    """One browser's app process, started from an argument vector (no shell)."""

    def __init__(self, argv: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(shlex.join(argv), **kwargs)
        self.argv = argv

    async def _open_app_process(self, width: int = 80, height: int = 24) -> asyncio.subprocess.Process:
        env = {**self._build_environment(width=width, height=height), SERVER_PID_ENV: str(os.getpid())}
        self._process = process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env=env)
        self._stdin = process.stdin
        return process

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    async def stop(self) -> None:
        """Ask the app to quit; terminate, then kill, one that does not; wait for its output to end."""
        process = self._process
        if process is not None and process.returncode is None:
            with contextlib.suppress(Exception):
                await self.send_meta({"type": "quit"})
            for ending, grace in ((None, QUIT_GRACE_S), (process.terminate, TERM_GRACE_S), (process.kill, None)):
                if ending is not None:
                    with contextlib.suppress(ProcessLookupError):
                        ending()
                try:
                    await asyncio.wait_for(process.wait(), grace)
                    break
                except asyncio.TimeoutError:
                    continue
        if self._task is not None:
            await self._task
            self._task = None


class ViewServer(Server):
    def __init__(self, plan: WebPlan) -> None:
        super().__init__(shlex.join(plan.argv), host=plan.host, port=plan.port, title=f"lvmd · {plan.db.name}")
        self.plan = plan
        self.services: dict[ArgvAppService, web.WebSocketResponse] = {}

    def initialize_logging(self) -> None:
        logging.basicConfig(level=logging.WARNING, format="lvmd tui --web: %(message)s")

    async def on_startup(self, app: web.Application) -> None:
        """tui/web.py has said where it serves; textual-serve's banner would say it again."""

    async def on_shutdown(self, app: web.Application) -> None:
        """Stop every app process, then close their websockets (whose handlers then return)."""
        services = list(self.services.items())
        await asyncio.gather(*(service.stop() for service, _ in services), return_exceptions=True)
        await asyncio.gather(*(ws.close() for _, ws in services), return_exceptions=True)

    def serve(self, debug: bool = False) -> None:
        self.debug = debug
        self.initialize_logging()
        web.run_app(self._make_app(), sock=list(self.plan.sockets), print=None, access_log=None,
                    handle_signals=True, shutdown_timeout=QUIT_GRACE_S + TERM_GRACE_S + 1.0)

    # -- who may ask ------------------------------------------------------------------------------
    def refusal(self, request: web.Request, *, websocket: bool) -> str | None:
        """Why this request is refused (None: served)."""
        if self.plan.loopback and not is_loopback_name(request.url.host or ""):
            return "this server answers only at a loopback address (127.0.0.1, localhost)"
        origin = request.headers.get("Origin")
        if websocket and origin is not None and origin.split("://", 1)[-1].lower() != request.host.lower():
            return "a page of another site may not open this view"
        return None

    @aiohttp_jinja2.template("app_index.html")
    async def handle_index(self, request: web.Request) -> dict[str, Any]:
        if (why := self.refusal(request, websocket=False)) is not None:
            raise web.HTTPForbidden(text=why)
        scheme = "wss" if request.secure else "ws"
        return {
            "font_size": max(6, min(_query_int(request, "fontsize", 16), 48)),
            "app_websocket_url": f"{scheme}://{request.host}/ws",
            "config": {"static": {"url": "/static/"}},
            "application": {"name": self.title},
        }

    async def handle_websocket(self, request: web.Request) -> web.WebSocketResponse:
        if (why := self.refusal(request, websocket=True)) is not None:
            raise web.HTTPForbidden(text=why)
        websocket = web.WebSocketResponse(heartbeat=15)
        await websocket.prepare(request)
        service = ArgvAppService(self.plan.argv, write_bytes=websocket.send_bytes, write_str=websocket.send_str,
                                 close=websocket.close, download_manager=self.download_manager, debug=self.debug)
        self.services[service] = websocket
        try:
            await service.start(_query_int(request, "width", 80), _query_int(request, "height", 24))
            await self._process_messages(websocket, service)
        except Exception as exc:  # a broken client or app ends this view only, never the server
            log.warning("a view ended: %s", exc)
        finally:
            await service.stop()
            self.services.pop(service, None)
            await websocket.close()
        return websocket


def _query_int(request: web.Request, name: str, default: int) -> int:
    try:
        return max(1, min(int(request.query.get(name, default)), 1000))
    except ValueError:
        return default
