"""The L1 cache on its own: TTLs, tags, the `cached` decorator and the stats."""

from __future__ import annotations

import time

from helixrt import L1Cache, cached

cache = L1Cache(maxsize=10_000, ttl=300.0)
cache["user:1"] = {"name": "Ada"}
cache.set("session:9", "token", ttl=1.0, tags=["user:1"])
print(cache["user:1"], "session:9" in cache, round(cache.remaining_ttl("session:9") or 0, 1))
print("invalidated", cache.invalidate_tag("user:1"))


@cached(cache, ttl=60.0)
def profile(user_id: int) -> dict[str, int]:
    time.sleep(0.05)  # a slow lookup
    return {"id": user_id}


started = time.perf_counter()
profile(7)
profile(7)
print(f"two calls in {time.perf_counter() - started:.3f} s")
print(cache.stats())
