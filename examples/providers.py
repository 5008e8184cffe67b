"""Lazy providers: a client created on first use, once, in a registry that closes it."""

from __future__ import annotations

import asyncio

from helixrt import CircuitBreaker, Lazy, ProviderRegistry


class ChatClient:
    def __init__(self, model: str) -> None:
        print(f"creating a client for {model}")
        self.model = model

    async def aclose(self) -> None:
        print(f"closing the client for {self.model}")


settings = Lazy(lambda: {"model": "small-model", "timeout": 30})


async def main() -> None:
    print(settings.get()["model"], settings.initialized)
    async with ProviderRegistry() as registry:
        registry.register(
            "chat",
            lambda: ChatClient(settings.get()["model"]),
            breaker=CircuitBreaker("chat"),
        )
        clients = await asyncio.gather(*(registry.get("chat") for _ in range(10)))
        print(len({id(c) for c in clients}), await registry.health())


asyncio.run(main())
