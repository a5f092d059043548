"""`lvmd tui --web`: the TUI served to browsers, safe by default.

Every browser tab gets its own app process, `python -m tui.web_app [--readonly] -- DB`, started without
a shell (the database path is one argument, never shell text) by tui/web_server.py, a small
layer over textual-serve. Safe by default: it binds loopback (reach it from elsewhere through
`ssh -L 8765:127.0.0.1:8765 HOST`); viewers cannot pause, evaluate or stop runs unless the
server was started with --control; another address needs an explicit --host and is announced
with a warning. The checks here run before anything starts: a refusal is one line, and no
socket, process or file is left behind.
"""
from __future__ import annotations

import argparse
import errno
import ipaddress
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
EXTRA_HINT = "pip install 'lvmd[web]'"
WEB_OPTIONS = ("host", "port", "control")


class WebRefused(Exception):
    """Why the web view did not start, in one line."""


@dataclass(frozen=True)
class WebPlan:
    """What serve_web() serves: the app command, the bound sockets and how exposed they are."""
    db: Path
    argv: tuple[str, ...]
    sockets: tuple[socket.socket, ...]
    host: str
    port: int
    loopback: bool
    control: bool

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"


def add_web_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("web view (textual-serve; needs the web extra: " + EXTRA_HINT + ")")
    group.add_argument("--web", action="store_true",
                       help="serve this TUI to browsers instead of showing it here (read-only unless --control)")
    group.add_argument("--host", help=f"with --web: the address to listen on (default {DEFAULT_HOST}: this machine "
                                      "only; any other address is reachable by others, and says so)")
    group.add_argument("--port", type=int, help=f"with --web: the port (default {DEFAULT_PORT}; 0 picks a free one)")
    group.add_argument("--control", action="store_true",
                       help="with --web: viewers may pause, resume, evaluate, checkpoint and stop runs")


def check_options(args: argparse.Namespace) -> None:
    """Web options without --web, or --control with --readonly, are mistakes: say so."""
    if not args.web:
        given = [f"--{name}" for name in WEB_OPTIONS if getattr(args, name) not in (None, False)]
        if given:
            raise WebRefused(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --web")
    elif args.control and args.readonly:
        raise WebRefused("--control and --readonly contradict each other; the web view is read-only without --control")


def app_argv(db: Path, *, run_id: int | None, baseline_id: int | None, control: bool) -> tuple[str, ...]:
    """The argument vector of one browser's app: this Python, the tui package, the options, then
    `--` so a database named like an option (`-x.db`) is still the database."""
    argv = [sys.executable, "-m", "tui.web_app"]
    if not control:
        argv.append("--readonly")
    if run_id is not None:
        argv += ["--run", str(run_id)]
    if baseline_id is not None:
        argv += ["--baseline", str(baseline_id)]
    return (*argv, "--", str(db))


def plan(args: argparse.Namespace, *, run_id: int | None, baseline_id: int | None) -> WebPlan:
    """Check the options, load textual-serve and bind the sockets; every failure is a WebRefused."""
    check_options(args)
    host = DEFAULT_HOST if args.host is None else args.host.strip()
    if not host:
        raise WebRefused("--host '': an empty address would listen on every interface; name the address "
                         f"(default {DEFAULT_HOST}, this machine only)")
    port = DEFAULT_PORT if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise WebRefused(f"--port {port}: a port is 0-65535 (0 picks a free one)")
    try:
        import textual_serve.server  # noqa: F401  -- the extra, checked before anything is bound
    except ImportError as exc:
        raise WebRefused(f"--web needs textual-serve ({exc}); install it: {EXTRA_HINT}") from None
    sockets, loopback = bind(host, port)
    db = Path(args.db).resolve()
    return WebPlan(db=db, argv=app_argv(db, run_id=run_id, baseline_id=baseline_id, control=args.control),
                   sockets=tuple(sockets), host=host, port=sockets[0].getsockname()[1], loopback=loopback,
                   control=args.control)


def bind(host: str, port: int) -> tuple[list[socket.socket], bool]:
    """Listening sockets on every address `host` resolves to (one port for all, even when 0
    picked it), and whether each of them is loopback. Binding here, before the server starts,
    makes a port in use a one-line refusal instead of a half-started server."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise WebRefused(f"--host {host}: cannot resolve it ({exc.strerror})") from None
    addresses = list(dict.fromkeys((family, addr[0]) for family, _, _, _, addr in infos))
    loopback = all(_is_loopback(addr) for _, addr in addresses)
    sockets: list[socket.socket] = []
    try:
        for family, addr in addresses:
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # a TIME_WAIT port, never a live one
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            chosen = sockets[0].getsockname()[1] if len(sockets) > 1 else port
            try:
                sock.bind((addr, chosen))
            except OSError as exc:
                raise WebRefused(_bind_error(addr, chosen, exc)) from None
            sock.listen(128)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets, loopback


def _bind_error(addr: str, port: int, exc: OSError) -> str:
    where = f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where}: the port is in use (another lvmd tui --web?); choose another with --port"
    if exc.errno == errno.EACCES:
        return f"{where}: permission denied (ports below 1024 need root); choose another with --port"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: not an address of this machine"
    return f"{where}: cannot listen ({exc.strerror})"


def _is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def is_loopback_name(host: str) -> bool:
    """A Host header's name that only this machine can mean (DNS rebinding names anything else)."""
    host = host.strip("[]").lower()
    return host == "localhost" or host.endswith(".localhost") or _is_loopback(host)


def exposure_warning(plan: WebPlan) -> str | None:
    """The warning a non-loopback bind prints (None on loopback)."""
    if plan.loopback:
        return None
    reach = ("and can pause, evaluate and stop them (--control)" if plan.control
             else "(read-only: no pause, eval or stop without --control)")
    return (f"warning: {plan.host}:{plan.port} is not loopback: anyone who can reach this port sees every run in "
            f"{plan.db} {reach}; the safe way is the default --host {DEFAULT_HOST} and "
            f"`ssh -L {plan.port}:127.0.0.1:{plan.port} HOST`")


def serve_web(args: argparse.Namespace, *, run_id: int | None = None, baseline_id: int | None = None) -> int:
    """Plan (one-line refusals), warn when exposed, then serve until Ctrl+C or SIGTERM; on the way
    out every app process the server started is stopped."""
    web = plan(args, run_id=run_id, baseline_id=baseline_id)
    from tui.web_server import ViewServer

    if (warning := exposure_warning(web)) is not None:
        print(f"lvmd: {warning}", file=sys.stderr, flush=True)
    mode = "with control (pause, eval, stop)" if web.control else "read-only"
    print(f"lvmd tui --web: serving {web.db} {mode} at {web.url} (Ctrl+C stops it and every view it started)",
          flush=True)
    ViewServer(web).serve()
    return 0
