"""A built wheel is a working server: not only the editable install of `make run`.

The wheel is built from a copy of the sources (so no stale `build/` of the checkout leaks in),
installed into a fresh virtualenv whose only extra path is this environment's site-packages (the
dependencies, so nothing is downloaded), and driven from an empty directory: `tap --version`,
`python -m tap`, `tap migrate`, then `tap serve` until `/livez` answers and SIGTERM stops it
cleanly. Before the defaults moved into the package, `tap migrate` from a wheel died on a
missing `configs/default.toml`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import urllib.request
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["pyproject.toml", "README.md", "tap", "actors", "loadgen", "docs"]
SERVING = re.compile(r"tap is serving on (http://\S+)")
# Files the code opens at run time; a package-data glob that matches nothing loses them silently.
DATA_FILES = {
    "tap/configs/default.toml",
    "tap/store/admit_bet.lua",
    "loadgen/scenarios/smoke.toml",
    "tap/edge/openapi.json",  # a link to docs/openapi.json in the tree: the wheel holds a copy
    "tap/web/static/index.html",  # the app reads the web client's files when it is created
    "tap/web/static/vendor/noble-curves/ed25519.js",
}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the wheel, the fresh venv's bin/) — built and installed once for this module."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, ignore=ignore)
        else:
            shutil.copy2(ROOT / name, src / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", str(src), "--no-deps", "-w", str(base / "dist")], check=True, timeout=120
    )
    (wheel,) = (base / "dist").glob("tap-*.whl")

    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [
                str(venv / "bin" / "python"),
                "-c",
                "import sysconfig; print(sysconfig.get_path('purelib'))",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # The dependencies come from this environment: a plain path line, so the editable install's
    # own .pth hooks there are not run, and the venv's site-packages (the wheel) comes first.
    (site / "zz_test_deps.pth").write_text(sysconfig.get_path("purelib") + "\n")
    subprocess.run(
        [
            *pip,
            "--python",
            str(venv / "bin" / "python"),
            "install",
            "--no-deps",
            "--no-index",
            str(wheel),
        ],
        check=True,
        timeout=120,
    )
    return wheel, venv / "bin"


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TAP__") and k != "PYTHONPATH"}


def test_the_wheel_carries_the_data_files_the_code_opens(installed: tuple[Path, Path]) -> None:
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert names >= DATA_FILES
    assert {n for n in names if n.startswith("loadgen/scenarios/")} >= {
        f"loadgen/scenarios/{p.name}" for p in (ROOT / "loadgen" / "scenarios").glob("*.toml")
    }


def test_version_from_the_console_script_and_python_m(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bin_dir = installed
    for cmd in (
        [str(bin_dir / "tap"), "--version"],
        [str(bin_dir / "python"), "-m", "tap", "--version"],
    ):
        out = subprocess.run(
            cmd, cwd=tmp_path, env=clean_env(), capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert re.fullmatch(r"tap \d+\.\d+\.\d+\S*\n", out.stdout), out.stdout


def test_installed_wheel_migrates_and_serves_from_another_directory(
    installed: tuple[Path, Path], tmp_path: Path
) -> None:
    _, bin_dir = installed
    env = clean_env()
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import tap.config as c; print(c.__file__)"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert not where.stdout.startswith(str(ROOT)), "the test imported the checkout, not the wheel"

    migrate = subprocess.run(
        [str(bin_dir / "tap"), "migrate"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert migrate.returncode == 0, migrate.stderr
    assert (tmp_path / "data" / "tap.db").is_file()  # the default db_path, relative to the cwd

    env["TAP__SERVER__PORT"] = "0"
    server = subprocess.Popen(
        [str(bin_dir / "tap"), "serve"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert server.stdout is not None
        url = None
        for line in server.stdout:  # ends when the process exits without announcing its URL
            if found := SERVING.search(line):
                url = found[1]
                break
        assert url is not None, f"tap serve exited with {server.wait(timeout=10)}"
        with urllib.request.urlopen(f"{url}/livez", timeout=10) as resp:
            assert resp.status == 200
            assert b'"pass"' in resp.read()
        with urllib.request.urlopen(f"{url}/openapi.json", timeout=10) as resp:
            assert json.loads(resp.read())["openapi"].startswith("3.1")  # shipped in the wheel
        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=30) == 0
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
