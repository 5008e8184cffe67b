"""A local OpenAI-compatible chat-completion server, run in a subprocess by
tests/test_openai_example.py.

`python tests/openai_server.py PORT [API_KEY]` serves on 127.0.0.1:PORT until terminated
(API_KEY defaults to "sk-test").

- `POST /v1/chat/completions`: needs `Authorization: Bearer API_KEY` (401 otherwise, in
  OpenAI's error format) and a body with `model` and `messages` (400 otherwise). Answers with a
  chat.completion whose content is "Echo: " and the last user message, with usage counted in
  words; with `"stream": true`, with a text/event-stream of chat.completion.chunk events (the
  role, then one word at a time, then the finish reason and, with
  `stream_options.include_usage`, the usage), ended by `data: [DONE]`.
- `GET /_count`: `{"count": n}`, the requests to /v1/chat/completions so far (every attempt,
  refused ones included).
- `POST /_fail?n=3&status=503&retry_after=0`: the next n requests (that pass the key check) get
  that status, with `Retry-After` if given. `POST /_reset` cancels the failures still planned.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from aiohttp import web

API_KEY = "sk-test"
CHUNK_INTERVAL = 0.005  # seconds between two stream chunks: the client sees them arrive apart

state: dict[str, Any] = {"count": 0, "fail": 0, "status": 503, "retry_after": None}


def error(
    status: int, message: str, kind: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status, headers=headers)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state["count"] += 1
    if request.headers.get("Authorization") != f"Bearer {API_KEY}":
        # Unlike the real API, no part of the key is echoed back.
        return error(401, "Incorrect API key provided.", "invalid_request_error")
    if state["fail"] > 0:
        state["fail"] -= 1
        headers = None if state["retry_after"] is None else {"Retry-After": state["retry_after"]}
        return error(state["status"], "The server is overloaded.", "server_error", headers)
    try:
        body = await request.json()
        model = body["model"]
        messages = body["messages"]
        last = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    except (ValueError, KeyError, TypeError, StopIteration):
        return error(400, "model and messages (with a user message) are required", "invalid")
    text = f"Echo: {last}"
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": len(text.split()),
        "total_tokens": prompt_tokens + len(text.split()),
    }
    common = {
        "id": f"chatcmpl-{state['count']}",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "fp_test",
    }
    if body.get("stream"):
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return await stream(request, common, text, usage if include_usage else None)
    message = {"role": "assistant", "content": text, "refusal": None}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}
    return web.json_response(
        {**common, "object": "chat.completion", "choices": [choice], "usage": usage}
    )


async def stream(
    request: web.Request, common: dict[str, Any], text: str, usage: dict[str, int] | None
) -> web.StreamResponse:
    response = web.StreamResponse(
        headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
    )
    await response.prepare(request)

    async def send(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        chunk = {**common, "object": "chat.completion.chunk", "choices": [choice], **extra}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await asyncio.sleep(CHUNK_INTERVAL)

    await send({"role": "assistant", "content": ""})
    words = text.split(" ")
    for i, word in enumerate(words):
        await send({"content": word if i == 0 else " " + word})
    await send({}, "stop")
    if usage is not None:
        chunk = {**common, "object": "chat.completion.chunk", "choices": [], "usage": usage}
        await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()
    return response


async def count(request: web.Request) -> web.StreamResponse:
    return web.json_response({"count": state["count"]})


async def fail(request: web.Request) -> web.StreamResponse:
    state["fail"] = int(request.query.get("n", "1"))
    state["status"] = int(request.query.get("status", "503"))
    state["retry_after"] = request.query.get("retry_after")
    return web.json_response({"fail": state["fail"]})


async def reset(request: web.Request) -> web.StreamResponse:
    state["fail"] = 0
    return web.json_response({"fail": 0})


def app() -> web.Application:
    application = web.Application()
    application.router.add_post("/v1/chat/completions", chat_completions)
    application.router.add_get("/_count", count)
    application.router.add_post("/_fail", fail)
    application.router.add_post("/_reset", reset)
    return application


async def main(port: int) -> None:
    runner = web.AppRunner(app(), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    import signal

    if len(sys.argv) > 2:
        API_KEY = sys.argv[2]
    loop = asyncio.new_event_loop()
    task = loop.create_task(main(int(sys.argv[1])))
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    finally:
        loop.close()
