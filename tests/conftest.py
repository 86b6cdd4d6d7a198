"""Shared fixtures for tests/: a running end-to-end server (see `tests/e2e.py`)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.e2e import Server, serving


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    """The whole server with default test settings (manual feed, 1 s columns, breaker closed)."""
    async with serving(tmp_path) as running:
        yield running
