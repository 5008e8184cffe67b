"""Shared fixtures: a real redis-server (and a real Redis Cluster) on free loopback ports,
started once per session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from helixrt._redis_server import redis_cluster, redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a throwaway redis-server (`make test` installs redis-server when it is missing)."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """`redis+cluster://127.0.0.1:PORT`: a throwaway Redis Cluster of 3 masters, no replicas."""
    with redis_cluster(masters=3) as url:
        yield url
