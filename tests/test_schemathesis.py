"""Schemathesis against `docs/openapi.json`, served by a real `tap serve` (issue 9, permanent
defence): every operation, with a logged-in, funded player (the admin token on admin routes), in
three modes: positive and negative examples from the spec, and hostile ones — a generated
request with one mutation the spec cannot express (invalid UTF-8 inside a JSON string, JSON
nested 40 deep, a 5,000-digit `Prefer: wait`, non-ASCII bytes in the bearer token or request id,
5,000-digit query integers, a cursor naming a position past 2⁶³). No answer is a 5xx; spec cases
conform to the spec (status declared, body schema, content type); every answer carries
`X-Request-ID`, every non-2xx the error shape, every 429/503 `Retry-After`; and the process is
alive and its /livez answers after every operation.

The server is a subprocess (the real CLI, as `make run` starts it): Schemathesis calls with
`requests`, synchronously, which an in-process trio server could not answer from the same thread.
Bounded: `EXAMPLES` per operation and mode, Hypothesis' database and shrinking off (a failure
prints the failing case and the server log tail).
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from eth_account import Account
from eth_account.messages import encode_defunct
from hypothesis import HealthCheck, Phase, given, settings
from nacl.signing import SigningKey
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tap import siwe

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "docs" / "openapi.json"
ADMIN_TOKEN = "schemathesis-admin-token-0123456789"
HOSTILE = "hostile"
# Per operation: spec examples per mode; hostile examples each get every mutation in turn.
EXAMPLES: dict[str, int] = {GenerationMode.POSITIVE: 10, GenerationMode.NEGATIVE: 8, HOSTILE: 3}
SERVING = re.compile(r"tap is serving on (http://\S+)")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@dataclass
class Served:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    player: dict[str, str]  # Authorization header of a logged-in, funded player

    def log_tail(self) -> str:
        return "\n--- server log ---\n" + self.log.read_text(errors="replace")[-4000:]


def _login(http: httpx.Client) -> dict[str, str]:
    wallet = Account.create()
    key = SigningKey.generate()
    ch = http.post("/api/auth/challenge", json={"address": wallet.address}).json()
    text = siwe.login_message(
        domain=ch["domain"],
        address=wallet.address,
        uri=ch["uri"],
        chain_id=ch["chain_id"],
        nonce=ch["nonce"],
        issued_at_ms=siwe.iso_to_ms(ch["issued_at"]),
        expiration_ms=siwe.iso_to_ms(ch["expiration_time"]),
        session_key_hex=key.verify_key.encode().hex(),
    )
    signature = "0x" + bytes(wallet.sign_message(encode_defunct(text=text)).signature).hex()
    r = http.post("/api/auth/login", json={"message": text, "signature": signature})
    assert r.status_code == 200, r.text
    auth = {"Authorization": f"Bearer {r.json()['token']}"}
    r = http.post("/api/deposits", json={"amount": 500_000_000}, headers=auth)
    assert r.status_code == 201, r.text
    return auth


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAP__")}
    env.update(
        {
            "TAP_ADMIN_TOKEN": ADMIN_TOKEN,
            "TAP__SERVER__PORT": "0",
            "TAP__SERVER__DB_PATH": f'"{tmp_path / "tap.db"}"',
            "TAP__SERVER__GRACEFUL_TIMEOUT_S": "2.0",
            "TAP__SERVER__LOG_LEVEL": '"warning"',
            "TAP__ARCHIVE__DIR": f'"{tmp_path / "archive"}"',
            "TAP__ARCHIVE__BACKUP_DIR": f'"{tmp_path / "backups"}"',
            "TAP__FEED__SIM_TICK_MS": "100",
            "TAP__BREAKER__HYSTERESIS_MS": "300",
            "TAP__PAYMENTS__MOCK_DEPOSITS": "true",
            # The fuzzer is one client making hundreds of requests: limits are not under test.
            "TAP__LIMITS__RATE_PER_S": "10000.0",
            "TAP__LIMITS__BURST": "10000",
            "TAP__LIMITS__CHALLENGE_RATE_PER_S": "10000.0",
            "TAP__LIMITS__CHALLENGE_BURST": "10000",
        }
    )
    log = tmp_path / "server.log"
    with log.open("wb") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tap.runtime.cli", "serve"],
            env=env,
            cwd=str(ROOT),
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = b""
        while not (m := SERVING.search(line.decode(errors="replace"))):
            assert time.monotonic() < deadline, "tap serve did not start"
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"tap serve exited: {log.read_text()[-3000:]}"
        url = m.group(1)
        with httpx.Client(base_url=url, timeout=10) as http:
            player = _login(http)
        yield Served(url, proc, log, player)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _headers_for(operation: Any, served: Served) -> dict[str, str]:
    """The credentials an operation declares: the player's session, the admin token, or none."""
    schemes = {
        name
        for requirement in operation.definition.raw.get("security", [{"session": []}])
        for name in requirement
    }
    if "admin" in schemes:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    if "session" in schemes:
        return dict(served.player)
    return {}


def _json_bytes(kwargs: dict[str, Any]) -> bytes:
    return json.dumps(kwargs.get("json", {}), ensure_ascii=False).encode()


def _bad_utf8(kwargs: dict[str, Any]) -> None:
    raw = _json_bytes(kwargs)
    at = raw.find(b'"')
    kwargs["content"] = raw[: at + 1] + b"\xc3\x28\xff" + raw[at + 1 :] if at >= 0 else b'"\xff"'


def _deep(kwargs: dict[str, Any]) -> None:
    kwargs["content"] = b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}"


def _huge_query(kwargs: dict[str, Any]) -> None:
    params = kwargs.get("params") or {}
    kwargs["params"] = {name: "9" * 5000 for name in params} or {"limit": "9" * 5000}


def _cursor(kwargs: dict[str, Any]) -> None:
    position = base64.urlsafe_b64encode(f"c{2**64}".encode()).rstrip(b"=").decode()
    kwargs["params"] = {**(kwargs.get("params") or {}), "cursor": position}


def _header(name: str, value: bytes) -> Callable[[dict[str, Any]], None]:
    def mutate(kwargs: dict[str, Any]) -> None:
        kwargs["headers"] = {**kwargs["headers"], name: value}

    return mutate


def _non_ascii_bearer(kwargs: dict[str, Any]) -> None:
    token = kwargs["headers"].get("Authorization", "Bearer x").encode("latin-1", "replace")
    kwargs["headers"] = {**kwargs["headers"], "Authorization": token + b"\xe9\xff"}


MUTATIONS: dict[str, Callable[[dict[str, Any]], None]] = {
    "invalid UTF-8 in a JSON string": _bad_utf8,
    "JSON nested 40 deep": _deep,
    "5,000-digit Prefer: wait": _header("Prefer", b"wait=" + b"9" * 5000),
    "non-ASCII bearer token": _non_ascii_bearer,
    "non-ASCII request id": _header("X-Request-ID", "é".encode() * 100),
    "5,000-digit query values": _huge_query,
    "cursor past 2^63": _cursor,
}


def _send_hostile(
    http: httpx.Client,
    case: schemathesis.Case,
    base_url: str,
    headers: dict[str, str],
    mutation: str,
) -> httpx.Response:
    kwargs = case.as_transport_kwargs(base_url=base_url, headers=headers)
    MUTATIONS[mutation](kwargs)
    body = kwargs.get("content")
    if body is None and "json" in kwargs:
        body = _json_bytes(kwargs)
    return http.request(
        kwargs["method"],
        kwargs["url"],
        params=kwargs.get("params") or None,
        headers={k: v for k, v in kwargs["headers"].items() if k != "Content-Length"},
        content=body,
    )


def _check_envelope(status: int, headers: Any, body: bytes, where: str) -> None:
    """API.md for every answer: X-Request-ID; the error shape on non-2xx (the health documents
    of /readyz and /healthz excepted); Retry-After on 429 and 503."""
    where = f"{where}: {status} {body[:300]!r}"
    # httpx headers, or Schemathesis' (lowercase names, a list of values each): one view.
    headers = {k.lower(): (v[0] if isinstance(v, list) else v) for k, v in dict(headers).items()}
    assert status < 500 or (where.startswith(("GET /readyz", "GET /healthz")) and status == 503), (
        where
    )
    assert headers.get("x-request-id"), where
    if status in (429, 503):
        assert int(headers["retry-after"]) >= 1, where
    if status >= 400 and not where.startswith(("GET /readyz", "GET /healthz")):
        error = json.loads(body)["error"]
        assert isinstance(error["code"], str) and isinstance(error["message"], str), where


def _fuzz(
    operation: Any,
    mode: str,
    served: Served,
    http: httpx.Client,
    runs: Counter[str],
    statuses: Counter[int],
) -> None:
    """`EXAMPLES[mode]` cases of one operation, each checked as the module says."""
    headers = _headers_for(operation, served)
    spec_mode = GenerationMode.POSITIVE if mode == HOSTILE else GenerationMode(mode)

    @settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        database=None,
        derandomize=True,  # the same cases every run: a failure here is reproducible
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=spec_mode))
    def run(case: schemathesis.Case) -> None:
        if mode == HOSTILE:
            for mutation in MUTATIONS:
                runs[operation.label] += 1
                r = _send_hostile(http, case, served.url, headers, mutation)
                statuses[r.status_code] += 1
                _check_envelope(
                    r.status_code, r.headers, r.content, f"{operation.label} with {mutation}"
                )
            return
        runs[operation.label] += 1
        response = case.call(base_url=served.url, headers=headers, timeout=15)
        statuses[response.status_code] += 1
        case.validate_response(response, checks=CHECKS, headers=headers)
        _check_envelope(response.status_code, response.headers, response.content, operation.label)

    try:
        run()
    except Exception as e:
        raise AssertionError(f"{operation.label} ({mode}): {e}{served.log_tail()}") from e


def test_schemathesis_finds_no_5xx_and_no_contract_breach(served: Served) -> None:
    schema = schemathesis.openapi.from_path(SPEC)
    runs: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    with httpx.Client(base_url=served.url, timeout=15) as http:
        for operation in operations:
            for mode in EXAMPLES:
                _fuzz(operation, mode, served, http, runs, statuses)
            assert served.proc.poll() is None, f"the server died{served.log_tail()}"
            assert http.get("/livez").status_code == 200
    print(f"\nschemathesis: {sum(runs.values())} cases over {len(runs)} operations; {statuses}")
    assert set(runs) == {op.label for op in operations}
    assert statuses[500] == 0
