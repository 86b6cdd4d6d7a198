"""A stand-in for `tap serve --role …` under the fleet supervisor (not a test module).

`python tests/child_stub.py NAME EVENTS [options]` appends one line per thing it does to the
EVENTS file ("NAME start PID", "NAME term", "NAME exit", "NAME readyz 503"), so a test reads the
order in which the supervisor made its children act. It becomes ready the way a real child does:
by writing `--ready-file`, or by answering `GET /readyz` 200 on `--readyz-port` (503 for its
first `--not-ready-for` probes). On SIGTERM it "drains" for `--drain-s` and exits 0, unless it
`--ignores-term`. `--exit-code N` exits at once (a child that cannot start); `--die-after-s S`
exits 1 that long after it is ready (a crash loop); with `--slow-restart MARKER` every start
after the first stays starting (no handler, not ready) for a minute.
"""

from __future__ import annotations

import argparse
import http.server
import os
import signal
import sys
import threading
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("name")
    parser.add_argument("events")
    parser.add_argument("--ready-file")
    parser.add_argument("--readyz-port", type=int)
    parser.add_argument("--not-ready-for", type=int, default=0)
    parser.add_argument("--drain-s", type=float, default=0.0)
    parser.add_argument("--ignores-term", action="store_true")
    parser.add_argument("--exit-code", type=int)
    parser.add_argument("--die-after-s", type=float)
    parser.add_argument("--slow-restart", metavar="MARKER")
    args = parser.parse_args()

    def event(what: str) -> None:
        # One O_APPEND write per line: lines of several children never interleave.
        fd = os.open(args.events, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, f"{args.name} {what}\n".encode())
        finally:
            os.close(fd)

    event(f"start {os.getpid()}")
    if args.exit_code is not None:
        sys.exit(args.exit_code)
    if args.slow_restart:
        marker = Path(args.slow_restart)
        if marker.exists():  # started before: this start takes long (SIGTERM's default applies)
            time.sleep(60)
        marker.touch()

    def on_term(signum: int, frame: object) -> None:
        event("term")
        if args.ignores_term:
            return
        time.sleep(args.drain_s)
        event("exit")
        os._exit(0)

    signal.signal(signal.SIGTERM, on_term)
    if args.readyz_port is not None:
        serve_readyz(args.readyz_port, args.not_ready_for, event)
    if args.ready_file:
        Path(args.ready_file).write_text("ready\n")
    if args.die_after_s is not None:
        time.sleep(args.die_after_s)
        event("crash")
        sys.exit(1)
    while True:
        time.sleep(3600)


def serve_readyz(port: int, not_ready_for: int, event: object) -> None:
    probes = [0]

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            probes[0] += 1
            status = 503 if probes[0] <= not_ready_for else 200
            event(f"readyz {status}")  # type: ignore[operator]
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()


if __name__ == "__main__":
    main()
