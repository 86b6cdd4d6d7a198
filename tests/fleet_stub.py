"""`supervise` over stand-in children, as a process of its own, so a test can signal it (not a
test module). `python tests/fleet_stub.py SPECS.json`: SPECS is a list of {name, role, argv,
ready_file | ready_port}; it prints "fleet ready" once every child is, and exits with
`supervise`'s code.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import trio

from tap.runtime.procs import ChildSpec, FileReady, Fleet, HttpReady, Policy, supervise


class Announce:
    def started(self, value: Fleet | None = None) -> None:
        print("fleet ready", flush=True)


def main() -> None:
    specs = [
        ChildSpec(
            s["name"],
            s["role"],
            s["argv"],
            FileReady(Path(s["ready_file"]))
            if "ready_file" in s
            else HttpReady("127.0.0.1", s["ready_port"]),
        )
        for s in json.loads(Path(sys.argv[1]).read_text())
    ]
    policy = Policy(start_within_s=20, stop_within_s=10, poll_s=0.02)
    sys.exit(trio.run(partial(supervise, specs, policy, task_status=Announce())))


if __name__ == "__main__":
    main()
