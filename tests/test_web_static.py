"""The web client as files and HTTP: what the edge serves, with which headers, and that the page
can only ever load code from its own origin (the browser suite, test_web_browser.py, plays it).
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

from tap import web
from tests.e2e import serving

ROOT = Path(__file__).resolve().parent.parent
STATIC = ROOT / "tap" / "web" / "static"
VENDOR_TOOLS = ROOT / "tap" / "web" / "vendor"
# Static import / export-from statements at the start of a line (tsc's output and ours); doc
# comments (` * import … from '…'`) do not start a line with `import`.
IMPORT = re.compile(
    r"""^(?:import|export)\b[^;'"]*?\bfrom\s*(['"])([^'"]+)\1|^import\s*(['"])([^'"]+)\3""", re.M
)
DYNAMIC_IMPORT = re.compile(r"(?<![\w.])import\(")


async def test_page_and_assets_are_served_with_a_self_only_csp(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        client = server.http()
        r = await client.get("/")
        assert r.status_code == 200
        assert r.headers["content-type"] == "text/html; charset=utf-8"
        csp = r.headers["content-security-policy"]
        assert r.headers.get_list("content-security-policy") == [csp]  # one policy, not two
        directives = dict(d.strip().split(" ", 1) for d in csp.split(";"))
        assert directives["default-src"] == "'self'"
        assert directives["script-src"] == "'self'"
        assert directives["style-src"] == "'self'"
        assert directives["connect-src"] == "'self'"
        assert directives["frame-ancestors"] == "'none'"
        assert "unsafe" not in csp and "http" not in csp and "*" not in csp
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-request-id"]
        assert "access-control-allow-origin" not in r.headers  # CORS unchanged: none configured

        js = await client.get("/web/js/main.js")
        assert js.status_code == 200
        assert js.headers["content-type"] == "text/javascript; charset=utf-8"
        assert js.content == (STATIC / "js" / "main.js").read_bytes()
        again = await client.get("/web/js/main.js", headers={"If-None-Match": js.headers["etag"]})
        assert again.status_code == 304 and again.content == b""

        vendored = await client.get("/web/vendor/noble-curves/ed25519.js")
        assert vendored.status_code == 200
        assert vendored.headers["content-type"].startswith("text/javascript")

        # The API keeps its own, stricter policy.
        api = await client.get("/api/markets")
        assert api.headers.get_list("content-security-policy") == [
            "default-src 'none'; frame-ancestors 'none'"
        ]
        assert api.headers["cache-control"] == "no-store"


async def test_only_packaged_files_of_served_types_are_reachable(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        client = server.http()
        for path in [
            "/web/vendor/noble-curves/LICENSE",  # in the package, but not a served type
            "/web/vendor/VERSIONS",
            "/web/../../pyproject.toml",
            "/web/%2e%2e/__init__.py",
            "/web/js/../../__init__.py",
            "/web/js/nope.js",
            "/web/",
        ]:
            r = await client.get(path)
            assert r.status_code == 404, path
            assert r.headers["content-type"] == "application/json", path
        # And a database beside the server is never reachable under any spelling.
        assert (await client.get(f"/web{tmp_path}/tap.db")).status_code == 404


async def test_client_config_tells_the_chain_and_whether_test_funds_exist(tmp_path: Path) -> None:
    async with serving(tmp_path) as server:
        r = await server.http().get("/api/config")
        assert r.status_code == 200
        assert r.json() == {
            "chain_id": server.cfg.auth.chain_id,
            "mock_deposits": True,
            "max_deposit": server.cfg.payments.max_deposit,
        }
    async with serving(tmp_path / "prod", payments__mock_deposits=False) as server:
        r = await server.http().get("/api/config")
        assert r.json()["mock_deposits"] is False and r.json()["max_deposit"] == 0


class _PageAudit(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.problems: list[str] = []
        self.scripts: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = {k for k, _ in attrs}
        if "style" in names:
            self.problems.append(f"<{tag} style=…> (inline style)")
        self.problems += [f"<{tag} {k}=…> (inline handler)" for k in names if k.startswith("on")]
        if tag == "style":
            self.problems.append("<style> element")
        if tag == "script":
            src = dict(attrs).get("src")
            if not src:
                self.problems.append("<script> without src")
            else:
                self.scripts.append(src)
            self._in_script = True
        for key in ("src", "href"):
            value = dict(attrs).get(key) or ""
            if value and not value.startswith("/"):
                self.problems.append(f"<{tag} {key}={value}> (not this origin)")

    def handle_endtag(self, tag: str) -> None:
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.problems.append("inline script body")


def test_the_page_has_no_inline_code_and_loads_only_from_its_origin() -> None:
    audit = _PageAudit()
    audit.feed((STATIC / "index.html").read_text(encoding="utf-8"))
    assert audit.problems == []
    assert audit.scripts == ["/web/js/main.js"]


def test_every_module_import_is_relative_and_resolves_to_a_served_file() -> None:
    served = set(web.load_static())
    modules = sorted(p for p in STATIC.rglob("*.js"))
    assert len(modules) > 10
    for module in modules:
        rel = module.relative_to(STATIC).as_posix()
        assert rel in served, rel
        text = module.read_text(encoding="utf-8")
        assert not DYNAMIC_IMPORT.search(text), f"{rel}: dynamic import"
        for m in IMPORT.finditer(text):
            spec = m.group(2) or m.group(4)
            assert spec.startswith(("./", "../")), f"{rel}: bare or remote import {spec!r}"
            target = (module.parent / spec).resolve().relative_to(STATIC.resolve()).as_posix()
            assert target in served, f"{rel}: {spec!r} → {target} is not served"


def test_the_import_check_catches_bare_and_dangling_imports() -> None:
    bare = "import { x } from '@noble/hashes/utils.js';\n"
    side = "import './y.js';\n"
    doc = " * import { z } from '@noble/curves/ed25519.js';\n"
    found = [m.group(2) or m.group(4) for m in IMPORT.finditer(bare + side + doc)]
    assert found == ["@noble/hashes/utils.js", "./y.js"]


def test_vendored_libraries_are_the_pinned_versions_with_their_licenses() -> None:
    pins = json.loads((VENDOR_TOOLS / "package.json").read_text())["dependencies"]
    lock = json.loads((VENDOR_TOOLS / "package-lock.json").read_text())["packages"]
    versions = (STATIC / "vendor" / "VERSIONS").read_text()
    for name, pin in pins.items():
        assert re.fullmatch(r"\d+\.\d+\.\d+", pin), f"{name}: pin an exact version, not {pin!r}"
        locked = lock[f"node_modules/{name}"]
        assert locked["version"] == pin
        assert locked["integrity"].startswith("sha512-")  # npm ci checks every tarball against it
        assert f"{name} {pin} MIT" in versions
        folder = STATIC / "vendor" / name.replace("@", "").replace("/", "-")
        license_text = (folder / "LICENSE").read_text()
        assert "Paul Miller" in license_text and "MIT" in license_text
        listed = [line for line in versions.splitlines() if line.startswith(name + "/")]
        on_disk = sorted(f"{name}/{p.relative_to(folder).as_posix()}" for p in folder.rglob("*.js"))
        assert sorted(listed) == on_disk
