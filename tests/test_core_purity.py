"""The sans-IO rule (DESIGN rule 1): every top-level module of `tap/` is pure.

Checked twice: statically (no forbidden import anywhere in the module's source, and no clock
read), and dynamically (importing the module in a fresh interpreter loads none of the I/O
libraries, even indirectly).
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

TAP = Path(__file__).resolve().parent.parent / "tap"
# `__main__.py` is the `python -m tap` entry point into the runtime, not a core module.
CORE = sorted(p for p in TAP.glob("*.py") if p.name not in ("__init__.py", "__main__.py"))
FORBIDDEN = {
    "trio",
    "trio_websocket",
    "quart",
    "quart_trio",
    "hypercorn",
    "redis",
    "sqlite3",
    "httpx",
    "anyio",
    "socket",
    "asyncio",
}
CLOCK_READS = {
    ("time", "time"),
    ("time", "monotonic"),
    ("time", "perf_counter"),
    ("time", "time_ns"),
    ("datetime", "now"),
    ("datetime", "utcnow"),
    ("date", "today"),
}


def test_the_core_is_not_empty() -> None:
    names = {p.stem for p in CORE}
    assert {"grid", "pricing", "ledger", "admission", "breaker", "resolver", "messages"} <= names


@pytest.mark.parametrize("path", CORE, ids=lambda p: p.stem)
def test_core_module_imports_no_io_library_and_reads_no_clock(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots = {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots = {node.module.split(".")[0]}
        else:
            roots = set()
        assert not roots & FORBIDDEN, f"{path.name}:{node.lineno} imports {roots & FORBIDDEN}"
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            assert (node.value.id, node.attr) not in CLOCK_READS, (
                f"{path.name}:{node.lineno} reads the clock ({node.value.id}.{node.attr})"
            )


def test_importing_the_core_loads_no_io_library() -> None:
    modules = [f"tap.{p.stem}" for p in CORE]
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    loaded = {name.split(".")[0] for name in json.loads(out)}
    # socket/asyncio may be pulled in by the standard library itself; the I/O frameworks may not.
    assert not loaded & (FORBIDDEN - {"socket", "asyncio"})
