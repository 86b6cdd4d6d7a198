"""Layers point one way (DESIGN, "The graph"): actors use `tap/`; in `tap/`, only the
supervisors and the command line (which start actors) import `actors/`.

Checked statically on every module's source: an import of `actors` anywhere else is a layer
pointing back up (before issue 11, the hot state imported the Redis gateway actor and the edge
imported the writer's fan-out).
"""

import ast
from pathlib import Path

TAP = Path(__file__).resolve().parent.parent / "tap"
# Where processes are put together: they may import actors to start them.
SUPERVISORS = {"runtime/supervisor.py", "runtime/scaleout.py", "runtime/cli.py", "runtime/procs.py"}


def _imports_actors(path: Path) -> list[int]:
    lines = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        else:
            continue
        if any(n == "actors" or n.startswith("actors.") for n in names):
            lines.append(node.lineno)
    return lines


def test_only_the_supervisors_import_actors() -> None:
    offenders = {
        str(p.relative_to(TAP)): lines
        for p in sorted(TAP.rglob("*.py"))
        if str(p.relative_to(TAP)) not in SUPERVISORS and (lines := _imports_actors(p))
    }
    assert offenders == {}


def test_the_check_sees_an_import_of_actors(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("import trio\n\ndef f():\n    from actors.fanout import follow\n")
    assert _imports_actors(module) == [4]
