"""The API documentation in `docs/` stays in step with the server.

`docs/openapi.json` must be valid OpenAPI 3.1, name exactly the HTTP routes `tap/edge/app.py`
registers (the blueprints of `tap/edge/routes/`), give every error code the status
`tap/errors.py` fixes for it, and describe the request and response bodies with the fields of
their Structs in `tap/messages.py`. `docs/websocket.md` must document `/ws` and every frame type,
and each of its example frames must decode as the Struct it claims to be. The route table is read
from the sources with `ast`, so no service (and no import of the app's dependencies) is needed.
"""

from __future__ import annotations

import ast
import json
import re
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator  # type: ignore[import-untyped]
from openapi_spec_validator import OpenAPIV31SpecValidator, validate
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tap import messages
from tap.config import MarketConfig
from tap.edge.openapi import GENERATED, authored, build_spec
from tap.errors import STATUS
from tests.e2e import Server

ROOT = Path(__file__).resolve().parent.parent
SPEC_PATH = ROOT / "docs" / "openapi.json"
WS_DOC_PATH = ROOT / "docs" / "websocket.md"
APP_PATH = ROOT / "tap" / "edge" / "app.py"
ROUTES_DIR = ROOT / "tap" / "edge" / "routes"  # one blueprint per module, each named `bp`
API_MD_PATH = ROOT / "docs" / "API.md"  # the contract, in the repository

HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

# The error codes docs/API.md (v1.1) names. Pinned here so that a code dropped from the contract
# or from tap/errors.py is noticed; `test_pinned_api_md_codes_match_api_md` keeps this list honest.
API_MD_CODES = frozenset(
    {
        "invalid_request",
        "unauthorized",
        "bad_signature",
        "unknown_nonce",
        "expired",
        "wrong_domain",
        "wrong_chain",
        "stale_timestamp",
        "replayed_nonce",
        "duplicate_cell_bet",
        "cell_not_placeable",
        "amount_out_of_range",
        "multiplier_below_minimum",
        "insufficient_funds",
        "exposure_limit",
        "rate_limited",
        "breaker_open",
        "overloaded",
        "dependency_unavailable",
    }
)

# Request bodies and the Structs the app decodes them into; response bodies the app encodes
# straight from a Struct. Each spec schema must have exactly the Struct's fields.
REQUEST_BODIES: dict[str, type[msgspec.Struct]] = {
    "ChallengeRequest": messages.ChallengeRequest,
    "LoginRequest": messages.LoginRequest,
    "BetRequest": messages.BetRequest,
    "DepositRequest": messages.DepositRequest,
    "WithdrawalRequest": messages.WithdrawalRequest,
    "BreakerRequest": messages.BreakerRequest,
    "CreditRequest": messages.CreditRequest,
}
RESPONSE_BODIES: dict[str, type[msgspec.Struct]] = {
    "Bet": messages.Bet,
    "DecidedBy": messages.DecidedBy,
    "LedgerEntry": messages.LedgerEntry,
    "Grid": messages.GridView,
    "GridCell": messages.GridCell,
}


def load_spec() -> dict[str, Any]:
    """The document the server serves at /openapi.json (authored paths, generated schemas)."""
    return build_spec()


# ── the app's route table, from its source ───────────────────────────────────────────────────


def quart_to_openapi(path: str) -> str:
    """`/api/bets/<bet_id>` or `/x/<int:n>` → `/api/bets/{bet_id}`, `/x/{n}`."""
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", path)


def routes_in(source: str) -> tuple[set[tuple[str, str]], set[str]]:
    """The (path, method) pairs of `@app.get/post/…/route(...)` decorators, and the websocket paths.

    Only decorators on an object named `app` or `bp` count: the app, and the blueprint each module
    of `tap/edge/routes/` declares its routes on (with full paths: no `url_prefix`).
    """
    http: set[tuple[str, str]] = set()
    websockets: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        for deco in node.decorator_list:
            if not (
                isinstance(deco, ast.Call)
                and isinstance(deco.func, ast.Attribute)
                and isinstance(deco.func.value, ast.Name)
                and deco.func.value.id in ("app", "bp")
                and deco.args
                and isinstance(deco.args[0], ast.Constant)
                and isinstance(deco.args[0].value, str)
            ):
                continue
            kind, path = deco.func.attr, quart_to_openapi(deco.args[0].value)
            if kind == "websocket":
                websockets.add(path)
            elif kind in HTTP_METHODS:
                http.add((path, kind))
            elif kind == "route":
                methods = ["GET"]
                for kw in deco.keywords:
                    if kw.arg == "methods":
                        methods = ast.literal_eval(kw.value)
                http.update((path, m.lower()) for m in methods)
    return http, websockets


def app_routes() -> tuple[set[tuple[str, str]], set[str]]:
    http: set[tuple[str, str]] = set()
    websockets: set[str] = set()
    for path in [APP_PATH, *sorted(ROUTES_DIR.glob("*.py"))]:
        try:
            found_http, found_ws = routes_in(path.read_text(encoding="utf-8"))
        except SyntaxError as e:
            pytest.fail(f"{path.relative_to(ROOT)} does not parse on this Python: {e}")
        http |= found_http
        websockets |= found_ws
    return http, websockets


def spec_routes(spec: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (path, method)
        for path, item in spec["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }


# ── walking the spec ─────────────────────────────────────────────────────────────────────────


def resolve(spec: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        ref = node["$ref"]
        assert ref.startswith("#/"), ref
        target: Any = spec
        for part in ref[2:].split("/"):
            target = target[part]
        node = target
    return node


def operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method, op in item.items():
            if method in HTTP_METHODS:
                yield path, method, op


def error_codes_by_status(spec: dict[str, Any]) -> dict[str, set[int]]:
    """Every `error.code` enum value in any operation's responses, with the statuses it is under."""
    found: dict[str, set[int]] = {}
    for _, _, op in operations(spec):
        for status, response in op["responses"].items():
            media = resolve(spec, response).get("content", {}).get("application/json")
            if media is None:
                continue
            for part in media["schema"].get("allOf", []):
                code = part.get("properties", {}).get("error", {}).get("properties", {})
                for value in code.get("code", {}).get("enum", []):
                    found.setdefault(value, set()).add(int(status))
    return found


def schema_validator(spec: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A JSON Schema 2020-12 validator for `schema` whose `#/components/…` refs reach the spec."""
    registry: Registry[Any] = Registry().with_resource(
        "urn:tap:openapi", Resource.from_contents(spec, default_specification=DRAFT202012)
    )
    rooted = json.loads(
        json.dumps(schema).replace('"#/components/', '"urn:tap:openapi#/components/')
    )
    return Draft202012Validator(rooted, registry=registry)


# ── the spec ─────────────────────────────────────────────────────────────────────────────────


def test_openapi_json_is_a_valid_openapi_3_1_document() -> None:
    spec = load_spec()
    assert spec["openapi"].startswith("3.1.")
    validate(spec, cls=OpenAPIV31SpecValidator)


def test_the_authored_document_is_valid_openapi_and_the_package_ships_it() -> None:
    spec = authored()
    validate(spec, cls=OpenAPIV31SpecValidator)
    assert spec == json.loads(SPEC_PATH.read_text(encoding="utf-8"))  # the link, followed


BOUNDS = ("minimum", "maximum", "minLength", "maxLength", "pattern", "maxItems", "minItems")


def test_served_body_schemas_carry_the_bounds_the_decoder_enforces() -> None:
    """Generated, not copied: every bound in a Struct's msgspec schema is in the document."""
    served = load_spec()["components"]["schemas"]
    _, generated = msgspec.json.schema_components(list(GENERATED.values()))
    checked = 0
    for name, struct in GENERATED.items():
        for prop, sub in generated[struct.__name__]["properties"].items():
            for bound in BOUNDS:
                if bound in sub:
                    assert served[name]["properties"][prop][bound] == sub[bound], (name, prop)
                    checked += 1
    assert checked >= 10  # the request bodies are bounded (amounts, nonces, strings)
    assert served["BetRequest"]["properties"]["amount"]["maximum"] == 2**53 - 1


async def test_the_server_serves_the_built_document(server: Server) -> None:
    r = await server.http().get("/openapi.json")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == json.loads(json.dumps(build_spec()))


def test_spec_documents_exactly_the_apps_http_routes() -> None:
    http, _ = app_routes()
    documented = spec_routes(load_spec())
    assert documented - http == set(), "documented but not served"
    assert http - documented == set(), "served but not documented"


def test_route_reader_sees_decorators_and_converts_parameters() -> None:
    source = (
        "def create_app():\n"
        "    @app.get('/api/bets/<bet_id>')\n"
        "    async def a(): ...\n"
        "    @app.route('/x/<int:n>', methods=['GET', 'POST'])\n"
        "    async def b(): ...\n"
        "    @app.websocket('/ws')\n"
        "    async def c(): ...\n"
        "    @other.post('/not-a-route')\n"
        "    async def d(): ...\n"
    )
    http, websockets = routes_in(source)
    assert http == {("/api/bets/{bet_id}", "get"), ("/x/{n}", "get"), ("/x/{n}", "post")}
    assert websockets == {"/ws"}


def test_every_error_code_in_the_spec_has_the_status_errors_py_fixes() -> None:
    found = error_codes_by_status(load_spec())
    unknown = set(found) - set(STATUS)
    assert unknown == set(), "codes the server does not know"
    wrong = {code: statuses for code, statuses in found.items() if statuses != {STATUS[code]}}
    assert wrong == {}


def test_every_api_md_error_code_appears_in_the_spec() -> None:
    found = error_codes_by_status(load_spec())
    assert set(STATUS) >= API_MD_CODES, "API.md codes missing from tap/errors.py"
    assert API_MD_CODES - set(found) == set()


def test_pinned_api_md_codes_match_api_md() -> None:
    prose = re.sub(r"```.*?```", "", API_MD_PATH.read_text(encoding="utf-8"), flags=re.DOTALL)
    spans = re.findall(r"`([^`]+)`", prose)
    named = {word for span in spans for word in re.findall(r"[a-z_]+", span)}
    assert named & set(STATUS) == API_MD_CODES


def test_every_non_2xx_response_declares_x_request_id_and_retry_after_where_due() -> None:
    spec = load_spec()
    for path, method, op in operations(spec):
        for status, response in op["responses"].items():
            headers = resolve(spec, response).get("headers", {})
            where = f"{method.upper()} {path} {status}"
            assert "X-Request-ID" in headers, where
            if status in ("429", "503"):
                assert "Retry-After" in headers, where


def test_request_bodies_refuse_unknown_fields_and_require_what_the_structs_require() -> None:
    schemas = load_spec()["components"]["schemas"]
    for name, struct in REQUEST_BODIES.items():
        schema = schemas[name]
        assert schema.get("additionalProperties") is False, name
        fields = msgspec.structs.fields(struct)
        assert set(schema["properties"]) == {f.name for f in fields}, name
        required = {f.name for f in fields if f.required}
        assert set(schema["required"]) == required, name


def json_types(annotation: Any) -> set[str]:
    """The JSON Schema types a Struct field annotation encodes to."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return set().union(*(json_types(a) for a in typing.get_args(annotation)))
    if origin is typing.Literal:
        return {"string"}
    if annotation is type(None):
        return {"null"}
    if isinstance(annotation, type) and issubclass(annotation, msgspec.Struct):
        return {"object"}
    if origin is list:
        return {"array"}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    return {simple[annotation]}


def schema_types(spec: dict[str, Any], schema: dict[str, Any]) -> set[str]:
    if "anyOf" in schema:
        return set().union(*(schema_types(spec, s) for s in schema["anyOf"]))
    schema = resolve(spec, schema)
    if "const" in schema:
        return {"string"}
    declared = schema["type"]
    return set(declared) if isinstance(declared, list) else {declared}


@pytest.mark.parametrize("name", [*REQUEST_BODIES, *RESPONSE_BODIES])
def test_body_schema_has_the_structs_fields_and_json_types(name: str) -> None:
    spec = load_spec()
    struct = {**REQUEST_BODIES, **RESPONSE_BODIES}[name]
    schema = spec["components"]["schemas"][name]
    hints = typing.get_type_hints(struct)
    assert set(schema["properties"]) == set(hints), name
    for field, annotation in hints.items():
        assert schema_types(spec, schema["properties"][field]) == json_types(annotation), field
    if name in RESPONSE_BODIES:  # msgspec encodes every field, nulls included
        assert set(schema["required"]) == set(hints), name


@pytest.mark.parametrize("name", REQUEST_BODIES)
def test_request_body_bounds_are_the_bounds_the_structs_enforce(name: str) -> None:
    """The spec's ranges and lengths are exactly what decoding enforces (API.md "Bounds"), and
    every integer and string a client sends is bounded — so a fuzzer driven by the spec probes the
    real edges, and a client reading it knows them."""
    spec = load_spec()
    _, components = msgspec.json.schema_components([REQUEST_BODIES[name]])
    enforced = components[name]["properties"]
    for field, schema in spec["components"]["schemas"][name]["properties"].items():
        schema = resolve(spec, schema)
        for key in ("minimum", "maximum", "minLength", "maxLength"):
            assert schema.get(key) == enforced[field].get(key), (name, field, key)
        if "pattern" in enforced[field]:
            assert "pattern" in schema, (name, field)
        if schema.get("type") == "integer":
            assert "minimum" in schema and "maximum" in schema, (name, field)
        if schema.get("type") == "string":
            assert "maxLength" in schema or "enum" in schema, (name, field)


def test_market_schema_fields_are_market_config_fields() -> None:
    schema = load_spec()["components"]["schemas"]["Market"]
    assert set(schema["properties"]) <= {f.name for f in msgspec.structs.fields(MarketConfig)}


def test_bet_and_ledger_enums_match_the_structs() -> None:
    schemas = load_spec()["components"]["schemas"]
    assert schemas["Bet"]["properties"]["status"]["enum"] == list(
        typing.get_args(messages.BetStatus)
    )
    assert schemas["LedgerEntry"]["properties"]["kind"]["enum"] == list(
        typing.get_args(messages.EntryKind)
    )
    assert schemas["BreakerRequest"]["properties"]["mode"]["enum"] == list(
        typing.get_args(messages.BreakerMode)
    )


def test_every_example_in_the_spec_matches_its_schema() -> None:
    spec = load_spec()
    checked = 0
    for path, method, op in operations(spec):
        bodies = [op.get("requestBody", {})]
        bodies += [resolve(spec, r) for r in op["responses"].values()]
        for body in bodies:
            for media in body.get("content", {}).values():
                if "example" in media:
                    errors = list(
                        schema_validator(spec, media["schema"]).iter_errors(media["example"])
                    )
                    assert errors == [], f"{method.upper()} {path}: {errors[0].message}"
                    checked += 1
    assert checked >= 5


def test_schema_validator_catches_a_wrong_example() -> None:
    spec = load_spec()
    validator = schema_validator(spec, {"$ref": "#/components/schemas/BetRequest"})
    assert not validator.is_valid({"cell_id": "BTC-USD:1:1", "amount": "1", "colour": "red"})


# ── the WebSocket page ───────────────────────────────────────────────────────────────────────


def ws_doc_frames() -> list[tuple[str | None, str]]:
    """(direction, frame) for every example frame on the page: each line of a ```json block
    (direction unknown) and each `→ …` / `← …` line of the example session."""
    frames: list[tuple[str | None, str]] = []
    fence: str | None = None
    for line in WS_DOC_PATH.read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fence = line[3:].strip() if fence is None else None
            continue
        if fence == "json" and line.strip():
            frames.append((None, line))
        elif fence == "text" and line[:2] in ("→ ", "← "):
            frames.append((line[0], line[2:]))
    return frames


CLIENT_TAGS = {t.__struct_config__.tag for t in typing.get_args(messages.ClientFrame)}
SERVER_TAGS = {t.__struct_config__.tag for t in typing.get_args(messages.ServerFrame)}


def test_websocket_page_documents_ws_and_every_frame_type() -> None:
    text = WS_DOC_PATH.read_text(encoding="utf-8")
    assert "`/ws`" in text
    _, websockets = app_routes()
    assert websockets == {"/ws"}
    shown = {json.loads(frame)["type"] for _, frame in ws_doc_frames()}
    assert shown == CLIENT_TAGS | SERVER_TAGS


def test_websocket_examples_decode_as_the_frames_they_claim_to_be() -> None:
    frames = ws_doc_frames()
    assert len(frames) >= len(CLIENT_TAGS | SERVER_TAGS)
    for direction, frame in frames:
        tag = json.loads(frame)["type"]
        if direction == "→" or (direction is None and tag in CLIENT_TAGS):
            decoded: Any = msgspec.json.decode(frame, type=messages.ClientFrame)
        else:
            assert direction in ("←", None), frame
            decoded = msgspec.json.decode(frame, type=messages.ServerFrame)
            # Server frames are not strict on decode; an unknown field would be a doc error.
            assert json.loads(msgspec.json.encode(decoded)) == json.loads(frame), frame
        assert decoded.__struct_config__.tag == tag
