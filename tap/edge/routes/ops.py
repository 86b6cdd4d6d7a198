"""`/livez`, `/readyz`, `/healthz`, `/metrics`, `/openapi.json`: what operators and tools probe.

It decides the probes' wire shape (`application/health+json`, `503` + `Retry-After` when not
ready); the checks and their verdicts are `tap.edge.health`'s. The OpenAPI document is built once
from the Structs (`tap.edge.openapi`), when this module is first imported: they do not change.
"""

from __future__ import annotations

import msgspec
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from quart import Blueprint, Response

from tap.edge import openapi
from tap.edge.http import edge

bp = Blueprint("ops", __name__)

_encoder = msgspec.json.Encoder()
_SPEC = _encoder.encode(openapi.build_spec())


@bp.get("/livez")
async def livez() -> Response:
    return Response(b'{"status":"pass"}', 200, content_type="application/health+json")


@bp.get("/readyz")
async def readyz() -> Response:
    ready, checks = await edge().health.readiness()
    return Response(
        _encoder.encode({"status": "pass" if ready else "fail", "checks": checks}),
        200 if ready else 503,
        headers=None if ready else {"Retry-After": "1"},
        content_type="application/health+json",
    )


@bp.get("/healthz")
async def healthz() -> Response:
    e = edge()
    status, checks = await e.health.health()
    return Response(
        _encoder.encode({"status": status, "timestamp": e.svc.clock.now_ms(), "checks": checks}),
        503 if status == "fail" else 200,
        content_type="application/health+json",
    )


@bp.get("/openapi.json")
async def openapi_json() -> Response:
    return Response(_SPEC, 200, content_type="application/json")


@bp.get("/metrics")
async def metrics_text() -> Response:
    edge().health.refresh_gauges()
    return Response(generate_latest(), 200, content_type=CONTENT_TYPE_LATEST)
