"""Benchmarks of the tiered cache's value codec: what lz4 and gzip save on LLM responses, and
what they cost.

The values are generated chat-completion responses (the JSON an OpenAI-style API returns: id,
model, choices with English prose in the message content, usage) of about 1 KiB, 16 KiB and
256 KiB, built by a seeded generator so every run measures the same bytes. Rows, per size and
compression: the ratio of body bytes before to after compression (higher saves more Redis
memory and network), and the time of one encode + decode against msgpack alone, uncompressed
(the speedup is below 1: it is the price of the saving). There is no goal: these rows inform
the choice of `compression=`, they do not gate it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from typing import Any

from helixrt.bench.runner import Context, Row, compare_time, missing_peer, peer_module
from helixrt.codec import Codec

__all__ = ["chat_completion", "rows"]

SIZES = {"1 KiB": 1 << 10, "16 KiB": 16 << 10, "256 KiB": 256 << 10}

# Common English words, most frequent first: drawn with Zipf-like weights they give text whose
# redundancy is close to real prose (gzip -6 shrinks both about 2.5-3.5x), unlike random
# letters (incompressible) or one repeated sentence (far too compressible).
_VOCABULARY = """
the of and to a in is that for it as with be on not this are by or can you from at which
an have will more data when your each if one use these it's into how also time only other
than then them its some two first may like new model should but used so where request
system cache value response each between before after while because through most such
latency memory server client key token tokens service first call calls result results
example number small large different same process performance read write users user
error errors retry timeout function code python rust library thread threads queue
worker workers event events provider providers answer question context prompt output
input text message messages stream streaming batch cost costs hit miss layer network
redis local remote instance instances simple better faster slower typical usually often
rather without within across every still even just well here there what who why step
steps approach case cases problem problems solution approach design pattern option
options default configuration limit limits size sizes high low long short keep keeps
make makes run runs need needs work works return returns start starts end ends state
"""
_WORDS = list(dict.fromkeys(_VOCABULARY.split()))
_WEIGHTS = [1.0 / (rank + 1) ** 0.9 for rank in range(len(_WORDS))]
_MODELS = ["gpt-4o-2024-08-06", "claude-3-5-sonnet-20241022", "llama-3.1-70b-instruct"]


def _sentence(rng: random.Random) -> str:
    words = rng.choices(_WORDS, _WEIGHTS, k=rng.randint(6, 22))
    if rng.random() < 0.2:
        words.insert(rng.randrange(len(words)), f"{rng.randint(2, 9999)}")
    text = " ".join(words)
    return text[0].upper() + text[1:] + rng.choice(".....?!:")


def _content(rng: random.Random, size: int) -> str:
    parts: list[str] = []
    length = 0
    while length < size:
        if rng.random() < 0.15:
            items = [f"{n}. {_sentence(rng)}" for n in range(1, rng.randint(3, 6))]
            paragraph = "\n".join(items)
        else:
            paragraph = " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))
        parts.append(paragraph)
        length += len(paragraph) + 2
    return "\n\n".join(parts)


def chat_completion(size: int, seed: int = 0) -> dict[str, Any]:
    """An OpenAI-style chat completion response of about `size` bytes once msgpack-encoded."""
    rng = random.Random(seed)
    envelope = 400  # the fields other than the message content, roughly
    content = _content(rng, max(size - envelope, 64))
    completion_tokens = len(content) // 4
    prompt_tokens = rng.randint(20, 4000)
    return {
        "id": "chatcmpl-"
        + "".join(rng.choices("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijkl0123456789", k=29)),
        "object": "chat.completion",
        "created": 1_735_000_000 + rng.randrange(10_000_000),
        "model": rng.choice(_MODELS),
        "system_fingerprint": f"fp_{rng.getrandbits(40):010x}",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
    }


def _round_trip(codec: Codec, value: Any) -> Callable[[], None]:
    def run() -> None:
        codec.decode(codec.encode(value))

    return run


def _msgpack_round_trip(msgpack: Any, value: Any) -> Callable[[], None]:
    def run() -> None:
        msgpack.unpackb(msgpack.packb(value, use_bin_type=True), raw=False, strict_map_key=False)

    return run


def rows(ctx: Context) -> Iterator[Row]:
    msgpack, lz4 = peer_module("msgpack"), peer_module("lz4")
    if msgpack is None or lz4 is None:
        note = missing_peer("msgpack and lz4", "helixrt[redis]")
        yield Row("tiered", "codec encode+decode", "ns", None, note=note)
        return
    for label, size in SIZES.items():
        value = chat_completion(size, seed=size)
        codecs = {name: Codec(compression=name) for name in ("lz4", "gzip")}
        candidates = {name: _round_trip(codec, value) for name, codec in codecs.items()}
        candidates["msgpack"] = _msgpack_round_trip(msgpack, value)
        ns = compare_time(ctx, candidates)
        for name, codec in codecs.items():
            before, after = codec.bytes_before, codec.bytes_after
            yield Row(
                "tiered",
                f"{name}: bytes before/after, {label} chat completion",
                "ratio",
                before / after if after else None,
            )
            yield Row(
                "tiered",
                f"{name}: encode+decode, {label} chat completion",
                "ns",
                ns[name],
                "msgpack, uncompressed",
                ns["msgpack"],
                "-",
                None,
            )
