"""Shared fixtures: a real redis-server on a free loopback port, started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helixrt._redis_server import redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a throwaway redis-server (`make test` installs redis-server when it is missing)."""
    with redis_server() as url:
        yield url
