"""The player's web client: static files shipped in this package, served by the edge.

`GET /` is the page and `GET /web/<name>` its modules, styles and vendored libraries, all from
`static/` (package data: nothing is built and nothing is fetched from elsewhere at run time).
The files are read once, when the app is created, into an immutable table; a request is a
dictionary lookup — no path ever reaches the filesystem, so there is nothing to traverse.

The page's Content-Security-Policy allows only this origin ('self'): no inline script or style,
no eval, no other host. The API's own responses keep the stricter `default-src 'none'`;
`SECURITY_HEADERS` is what `app.py` adds to responses of this blueprint instead.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from quart import Blueprint, Response, request

# Served extensions and their types; anything else in static/ (LICENSE, VERSIONS) is not served.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
PAGE_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; font-src 'none'; object-src 'none'; base-uri 'none'; "
    "form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = [
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
    # Revalidate every time (cheap: ETag → 304), so a deploy is picked up on the next load.
    ("Cache-Control", "no-cache"),
    ("Content-Security-Policy", PAGE_CSP),
    ("Cross-Origin-Opener-Policy", "same-origin"),
]


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def load_static() -> dict[str, StaticFile]:
    """Every servable file under static/, keyed by its path relative to it ('js/main.js')."""
    files: dict[str, StaticFile] = {}
    root = resources.files(__package__).joinpath("static")

    def walk(node: Traversable, prefix: str) -> None:
        for child in node.iterdir():
            name = prefix + child.name
            if child.is_dir():
                walk(child, name + "/")
                continue
            suffix = "." + child.name.rsplit(".", 1)[-1] if "." in child.name else ""
            kind = CONTENT_TYPES.get(suffix)
            if kind is None:
                continue
            body = child.read_bytes()
            etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
            files[name] = StaticFile(body, kind, etag)

    walk(root, "")
    return files


def _respond(file: StaticFile) -> Response:
    if file.etag in request.headers.get("If-None-Match", ""):
        return Response(b"", 304, headers={"ETag": file.etag})
    return Response(file.body, 200, headers={"ETag": file.etag}, content_type=file.content_type)


def create_blueprint() -> Blueprint:
    """The player's page as a Quart blueprint: `/` is the page, `/web/<name>` its files. Every
    file is read once at startup and served from memory with its content type and an ETag
    (a matching `If-None-Match` gets 304); a name not in the bundle is a JSON 404."""
    files = load_static()
    index = files["index.html"]
    bp = Blueprint("web", __name__)

    @bp.get("/")
    async def page() -> Response:
        return _respond(index)

    @bp.get("/web/<path:name>")
    async def asset(name: str) -> Response:
        file = files.get(name)
        if file is None:
            return Response(
                b'{"error":{"code":"not_found","message":"no such file"}}',
                404,
                content_type="application/json",
            )
        return _respond(file)

    return bp
