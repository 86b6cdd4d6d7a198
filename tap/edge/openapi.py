"""The OpenAPI document the edge serves at `/openapi.json`.

Two sources, each for what it is good at. The paths, the prose, the examples and the error
model are written by hand in `docs/openapi.json` (shipped in the package as
`tap/edge/openapi.json`, a link to it). The schemas of the bodies the app decodes and encodes
straight from msgspec Structs are generated from those Structs (`msgspec.json.schema_components`),
so the fields, types and bounds the document publishes are the ones the decoder enforces and
cannot drift; the hand-written descriptions and examples of those schemas are kept on top.
`tests/test_openapi.py` checks the result against the app's routes and validates every example.
"""

from __future__ import annotations

import json
from importlib.resources import files
from typing import Any

import msgspec

from tap import messages

# Component name in the document → the Struct it is generated from.
GENERATED: dict[str, type[msgspec.Struct]] = {
    "ChallengeRequest": messages.ChallengeRequest,
    "LoginRequest": messages.LoginRequest,
    "BetRequest": messages.BetRequest,
    "DepositRequest": messages.DepositRequest,
    "WithdrawalRequest": messages.WithdrawalRequest,
    "BreakerRequest": messages.BreakerRequest,
    "CreditRequest": messages.CreditRequest,
    "Bet": messages.Bet,
    "DecidedBy": messages.DecidedBy,
    "LedgerEntry": messages.LedgerEntry,
    "Grid": messages.GridView,
    "GridCell": messages.GridCell,
}
# Encoded by the app: msgspec writes every field, nulls and defaults included.
RESPONSE_BODIES = frozenset({"Bet", "DecidedBy", "LedgerEntry", "Grid", "GridCell"})
_PROSE = ("description", "example", "examples")
_REF = "#/components/schemas/{name}"


def authored() -> dict[str, Any]:
    """The hand-written document, as shipped in the package."""
    text = (files("tap.edge") / "openapi.json").read_text(encoding="utf-8")
    spec: dict[str, Any] = json.loads(text)
    return spec


def _generated_schemas() -> dict[str, dict[str, Any]]:
    _, components = msgspec.json.schema_components(list(GENERATED.values()), ref_template=_REF)
    text = json.dumps(components)
    for name, struct in GENERATED.items():  # the document's names for the Structs
        text = text.replace(f'"{_REF.format(name=struct.__name__)}"', f'"{_REF.format(name=name)}"')
    renamed: dict[str, dict[str, Any]] = json.loads(text)
    return {name: renamed[struct.__name__] for name, struct in GENERATED.items()}


def _merge(generated: dict[str, Any], written: dict[str, Any], *, response: bool) -> dict[str, Any]:
    """The generated schema, with the hand-written prose (and enum order) laid on top."""
    schema = {k: v for k, v in generated.items() if k not in ("title", "description")}
    schema.update({k: written[k] for k in _PROSE if k in written})
    written_props = written.get("properties", {})
    for prop, sub in schema.get("properties", {}).items():
        prose = written_props.get(prop, {})
        sub.update({k: prose[k] for k in _PROSE if k in prose and k not in sub})
        if "enum" in sub:
            if set(prose.get("enum", ())) == set(sub["enum"]):
                sub["enum"] = prose["enum"]  # the order the prose explains them in
            if all(isinstance(v, str) for v in sub["enum"]):
                sub.setdefault("type", "string")
    if response:
        schema["required"] = list(schema.get("properties", {}))
    return schema


def build_spec() -> dict[str, Any]:
    """The document `/openapi.json` serves."""
    spec = authored()
    schemas = spec["components"]["schemas"]
    for name, generated in _generated_schemas().items():
        schemas[name] = _merge(generated, schemas.get(name, {}), response=name in RESPONSE_BODIES)
    return spec
