"""One browser's app under `lvmd tui --web`: `python -m tui.web_app ARGS` is `python -m tui ARGS`
that also ends when its server does.

A server stopped by Ctrl+C or SIGTERM stops its apps itself (tui/web_server.py). One that is
killed outright (SIGKILL, the OOM killer) cannot, and its apps would live on as orphans: their
input is gone and, with nobody reading their output, SIGTERM no longer ends them. So each app
watches for its parent to change and then leaves at once; it holds nothing that needs a clean
exit (a read-only connection, no terminal to restore).
"""
from __future__ import annotations

import os
import sys
import threading
import time

SERVER_PID_ENV = "LVMD_WEB_SERVER_PID"
WATCH_INTERVAL_S = 1.0


def end_with_server(server_pid: int, interval: float = WATCH_INTERVAL_S) -> threading.Thread:
    def watch() -> None:
        while os.getppid() == server_pid:
            time.sleep(interval)
        os._exit(0)

    thread = threading.Thread(target=watch, name="end-with-server", daemon=True)
    thread.start()
    return thread


def main() -> int:
    server = os.environ.get(SERVER_PID_ENV, "")
    if server.isdigit():
        end_with_server(int(server))
    from tui.launch import main as tui_main

    return tui_main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
