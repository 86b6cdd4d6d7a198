"""The error vocabulary of API.md: every code the server may answer, with its HTTP status.

Core and shells raise or return these codes; the edge turns them into
`{"error": {"code", "message", ...extra}}` bodies (and WS `error` frames) with the status below.
"""

from __future__ import annotations

from typing import Any

STATUS: dict[str, int] = {
    "invalid_request": 400,
    "unauthorized": 401,
    "bad_signature": 401,
    "stale_timestamp": 401,
    "wrong_chain": 401,
    "unknown_nonce": 401,
    "expired": 401,
    "wrong_domain": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "replayed_nonce": 409,
    "duplicate_cell_bet": 409,
    "archive_running": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    "cell_not_placeable": 422,
    "amount_out_of_range": 422,
    "multiplier_below_minimum": 422,
    "insufficient_funds": 422,
    "exposure_limit": 422,
    "rate_limited": 429,
    "internal_error": 500,
    "breaker_open": 503,
    "overloaded": 503,
    "dependency_unavailable": 503,
    "shutting_down": 503,
}


class ApiError(Exception):
    """A refusal with an API.md code; `extra` fields are merged into the error object."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after_s: int | None = None,
        limit: int | None = None,
        **extra: Any,
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = STATUS[code]
        self.retry_after_s = retry_after_s
        self.limit = limit  # for rate_limited: the burst, sent as RateLimit-Limit
        self.extra = extra

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}}
