"""Codec: round trips through every serializer and compression, the stored format byte by byte,
and DecodeError (and nothing else) for every kind of bad input."""

from __future__ import annotations

import contextlib
import json
import pickle
import random
import struct
import subprocess
import sys
import zlib
from typing import Any

import lz4.block
import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helixrt.codec import Codec, DecodeError
from helixrt.errors import HelixError, InvalidArgumentError, InvalidTypeError

KEY = b"0123456789abcdef0123456789abcdef"
HEADER = struct.Struct(">BBBBI")
SERIALIZERS = ["msgpack", "json", "pickle"]
COMPRESSIONS = ["lz4", "gzip", None]

# Prose-like text: compressible, as cached LLM answers are.
TEXT = " ".join(
    f"the cache keeps answer {i % 37} of the model for the next request" for i in range(60)
)
VALUE: dict[str, Any] = {
    "id": "chatcmpl-1",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": TEXT}}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 480, "total_tokens": 492},
    "ratio": 0.25,
    "none": None,
    "ok": True,
}


class Reversed:
    """A custom serializer: JSON with the bytes reversed (so it differs from "json")."""

    def dumps(self, value: Any) -> bytes:
        return json.dumps(value).encode()[::-1]

    def loads(self, data: bytes) -> Any:
        assert isinstance(data, bytes)  # the protocol promises bytes
        return json.loads(data[::-1])


def header(data: bytes) -> tuple[int, int, int, int, int]:
    fields: tuple[int, int, int, int, int] = HEADER.unpack_from(data)
    return fields


def craft(
    body: bytes,
    *,
    version: int = 1,
    serializer: int = 1,
    compression: int = 0,
    flags: int = 0,
    length: int | None = None,
) -> bytes:
    size = len(body) if length is None else length
    return HEADER.pack(version, serializer, compression, flags, size) + body


# --- round trips ---------------------------------------------------------------------------


# pickle only signed: without a key the constructor refuses it (tested below)
COMBOS = [
    (serializer, compression, signed)
    for serializer in SERIALIZERS
    for compression in COMPRESSIONS
    for signed in (False, True)
    if signed or serializer != "pickle"
]


@pytest.mark.parametrize(("serializer", "compression", "signed"), COMBOS)
@pytest.mark.parametrize("expires_at", [None, 1_767_225_600.125])
def test_round_trip(
    serializer: str, compression: str | None, signed: bool, expires_at: float | None
) -> None:
    codec = Codec(serializer, compression, signing_key=KEY if signed else None)
    data = codec.encode(VALUE, expires_at)
    assert isinstance(data, bytes)
    version, serializer_id, compression_id, flags, length = header(data)
    assert (version, serializer_id) == (1, {"msgpack": 1, "json": 2, "pickle": 3}[serializer])
    assert compression_id == {"lz4": 1, "gzip": 2, None: 0}[compression]
    assert flags == (1 if signed else 0) | (2 if expires_at is not None else 0)
    assert length == codec.bytes_before  # the uncompressed body's length
    overhead = 8 + (8 if expires_at is not None else 0) + (32 if signed else 0)
    assert len(data) == overhead + codec.bytes_after
    if expires_at is not None:
        assert struct.unpack_from(">Q", data, 8) == (1_767_225_600_125,)
    for form in (data, bytearray(data), memoryview(data)):
        assert codec.decode(form) == (VALUE, expires_at)
    assert codec.serializer_name == serializer
    assert codec.compression_name == compression


def test_body_is_the_serializers_output() -> None:
    plain = Codec("msgpack", None).encode(VALUE)
    assert plain[8:] == msgpack.packb(VALUE, use_bin_type=True)
    as_json = Codec("json", None).encode(VALUE)
    assert as_json[8:] == json.dumps(VALUE, separators=(",", ":")).encode()
    packed = Codec("msgpack", "lz4").encode(VALUE)
    length = header(packed)[4]
    assert lz4.block.decompress(packed[8:], uncompressed_size=length) == plain[8:]
    gzipped = Codec("msgpack", "gzip").encode(VALUE)
    assert zlib.decompress(gzipped[8:], 31) == plain[8:]  # a real gzip stream


def test_signature_is_hmac_sha256_of_header_and_body() -> None:
    import hashlib
    import hmac

    data = Codec("msgpack", None, signing_key=KEY).encode(VALUE, 5.0)
    prefix, signature, body = data[:16], data[16:48], data[48:]
    assert signature == hmac.digest(KEY, prefix + body, hashlib.sha256)


def test_json_keeps_non_ascii_as_utf8() -> None:
    codec = Codec("json", None)
    data = codec.encode({"text": "naïve café ☕"})
    assert "naïve café ☕".encode() in data
    assert codec.decode(data)[0] == {"text": "naïve café ☕"}


def test_msgpack_keeps_int_keys_and_bytes() -> None:
    codec = Codec()
    value = {1: b"\x00\xff", "k": [1, 2.5, None]}
    assert codec.decode(codec.encode(value))[0] == value


def test_pickle_round_trips_python_objects() -> None:
    codec = Codec("pickle", signing_key="a string key")
    value = {"set": {1, 2}, "tuple": (1, "a"), "complex": 1 + 2j}
    assert codec.decode(codec.encode(value))[0] == value


def test_custom_serializer() -> None:
    codec = Codec(Reversed(), "gzip", 0)
    data = codec.encode(VALUE, 12.5)
    assert header(data)[1] == 4
    assert codec.serializer_name == "custom"
    assert codec.decode(data) == (VALUE, 12.5)


def test_custom_dumps_returning_str_is_refused() -> None:
    class Text:
        def dumps(self, value: Any) -> str:
            return json.dumps(value)

        def loads(self, data: bytes) -> Any:
            return json.loads(data)

    with pytest.raises(InvalidTypeError, match="dumps returned str"):
        Codec(Text()).encode({"a": 1})


def test_expiry_is_kept_to_the_millisecond() -> None:
    codec = Codec()
    assert codec.decode(codec.encode("x", 1_700_000_000.0004))[1] == 1_700_000_000.0
    assert codec.decode(codec.encode("x", 0))[1] == 0.0
    assert codec.decode(codec.encode("x"))[1] is None


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 2.0**64])
def test_bad_expiry_is_refused(bad: float) -> None:
    with pytest.raises(InvalidArgumentError, match="expires_at"):
        Codec().encode("x", bad)


def test_expiry_of_wrong_type_is_refused() -> None:
    with pytest.raises(InvalidTypeError, match="expires_at must be seconds"):
        Codec().encode("x", "soon")  # type: ignore[arg-type]


JSONISH = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=20,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    value=JSONISH,
    serializer=st.sampled_from(["msgpack", "json"]),
    compression=st.sampled_from(COMPRESSIONS),
    threshold=st.sampled_from([0, 16, 512]),
    expires_at=st.none() | st.integers(0, 2**50).map(lambda ms: ms / 1000),
)
def test_round_trip_property(
    value: Any, serializer: str, compression: str | None, threshold: int, expires_at: float | None
) -> None:
    codec = Codec(serializer, compression, threshold)
    assert codec.decode(codec.encode(value, expires_at)) == (value, expires_at)


# --- compression ---------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["lz4", "gzip"])
def test_compresses_only_from_the_threshold(compression: str) -> None:
    value = "a" * 200
    size = len(msgpack.packb(value))
    assert header(Codec("msgpack", compression, size + 1).encode(value))[2] == 0
    at_threshold = Codec("msgpack", compression, size).encode(value)
    assert header(at_threshold)[2] == {"lz4": 1, "gzip": 2}[compression]
    assert len(at_threshold) < 8 + size


@pytest.mark.parametrize("compression", ["lz4", "gzip"])
def test_incompressible_body_is_stored_as_is(compression: str) -> None:
    noise = random.Random(7).randbytes(2000)  # no redundancy: neither codec can shrink it
    codec = Codec("msgpack", compression, 0)
    data = codec.encode(noise)
    assert header(data)[2] == 0
    assert codec.bytes_before == codec.bytes_after == len(data) - 8
    assert codec.decode(data)[0] == noise


def test_byte_counters_total_every_encode() -> None:
    codec = Codec("msgpack", "lz4", 512)
    small = codec.encode("short")  # under the threshold: counted, not compressed
    assert codec.bytes_before == codec.bytes_after == len(small) - 8
    big = codec.encode(VALUE)
    big_before = header(big)[4]
    assert codec.bytes_before == len(small) - 8 + big_before
    assert codec.bytes_after == len(small) - 8 + len(big) - 8
    assert codec.bytes_after < codec.bytes_before


def test_no_compression_never_compresses() -> None:
    codec = Codec("msgpack", None, 0)
    assert header(codec.encode(VALUE))[2] == 0
    assert codec.compression_name is None
    assert codec.bytes_before == codec.bytes_after


@pytest.mark.parametrize("written_with", ["lz4", "gzip", None])
@pytest.mark.parametrize("read_with", ["lz4", "gzip", None])
def test_reads_every_compression_whatever_it_writes(
    written_with: str | None, read_with: str | None
) -> None:
    data = Codec("msgpack", written_with, 0).encode(VALUE)
    assert Codec("msgpack", read_with).decode(data)[0] == VALUE


@pytest.mark.parametrize("compression", ["lz4", "gzip"])
def test_most_compressible_body_round_trips(compression: str) -> None:
    # The decompression-bomb guard must not refuse a real value at the codec's best ratio.
    codec = Codec("msgpack", compression, 0)
    value = bytes(2_000_000)
    assert codec.decode(codec.encode(value))[0] == value


# --- bad input to decode: DecodeError, never anything else ---------------------------------


def valid_values() -> list[tuple[Codec, bytes]]:
    out = []
    for signed in (False, True):
        key = KEY if signed else None
        for compression in COMPRESSIONS:
            codec = Codec("msgpack", compression, 0, signing_key=key)
            out.append((codec, codec.encode(VALUE, 99.5)))
            out.append((codec, codec.encode([1, "two"])))
    return out


VALID = valid_values()


def decode_or_decode_error(codec: Codec, data: bytes) -> None:
    with contextlib.suppress(DecodeError):  # any other exception fails the test
        codec.decode(data)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=200), pick=st.integers(0, len(VALID) - 1))
def test_garbage_is_a_decode_error(data: bytes, pick: int) -> None:
    decode_or_decode_error(VALID[pick][0], data)


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=64),
    serializer=st.sampled_from([1, 2]),
    compression=st.integers(0, 2),
    flags=st.integers(0, 3),
    length=st.integers(0, 2**32 - 1),
    pick=st.integers(0, len(VALID) - 1),
)
def test_garbage_behind_a_plausible_header_is_a_decode_error(
    body: bytes, serializer: int, compression: int, flags: int, length: int, pick: int
) -> None:
    data = craft(body, serializer=serializer, compression=compression, flags=flags, length=length)
    decode_or_decode_error(VALID[pick][0], data)


@pytest.mark.parametrize(("codec", "data"), VALID)
def test_every_truncation_is_a_decode_error(codec: Codec, data: bytes) -> None:
    for end in range(len(data)):
        with pytest.raises(DecodeError):
            codec.decode(data[:end])
    with pytest.raises(DecodeError, match=r"truncated|length mismatch|signature"):
        codec.decode(data[: len(data) // 2])


@pytest.mark.parametrize(("codec", "data"), VALID)
def test_flipped_bytes(codec: Codec, data: bytes) -> None:
    signed = header(data)[3] & 1
    for index in range(len(data)):
        for bit in (0x01, 0x80):
            damaged = bytearray(data)
            damaged[index] ^= bit
            if signed:
                with pytest.raises(DecodeError):
                    codec.decode(damaged)
            else:
                decode_or_decode_error(codec, bytes(damaged))


def test_flipped_header_bytes_are_detected_even_unsigned() -> None:
    codec, data = VALID[0]
    for index in range(4):  # version, serializer, compression, flags
        damaged = bytearray(data)
        damaged[index] ^= 0x80
        with pytest.raises(DecodeError):
            codec.decode(damaged)


def test_appended_byte_is_a_length_mismatch() -> None:
    codec = Codec("msgpack", None)
    with pytest.raises(DecodeError, match="length mismatch"):
        codec.decode(codec.encode(VALUE) + b"\x00")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"version": 0}, "unknown format version 0"),
        ({"version": 2}, "unknown format version 2"),
        ({"serializer": 0}, "unknown serializer id 0"),
        ({"serializer": 9}, "unknown serializer id 9"),
        ({"compression": 3}, "unknown compression id 3"),
        ({"flags": 4}, "unknown flags 0x04"),
        ({"serializer": 2}, "written by the json serializer, this codec reads msgpack"),
        ({"length": 99}, "length mismatch"),
        ({"compression": 1, "length": 10**9}, "length mismatch"),
        ({"compression": 1}, "lz4 decompression failed"),
        ({"compression": 2}, "gzip decompression failed"),
        ({"flags": 1}, "signed, and this codec has no signing_key"),
        ({"flags": 2}, "truncated value"),
    ],
)
def test_header_errors_say_what_was_wrong(fields: dict[str, int], message: str) -> None:
    body = msgpack.packb("hello")
    with pytest.raises(DecodeError, match=message):
        Codec().decode(craft(body, **fields))


def test_json_value_read_by_msgpack_codec() -> None:
    data = Codec("json").encode(VALUE)
    with pytest.raises(DecodeError, match="json serializer, this codec reads msgpack"):
        Codec("msgpack").decode(data)


def test_undeserializable_body() -> None:
    with pytest.raises(DecodeError, match="cannot deserialize msgpack body"):
        Codec().decode(craft(b"\xc1"))  # 0xc1 is never used in msgpack
    with pytest.raises(DecodeError, match="cannot deserialize json body"):
        Codec("json").decode(craft(b"{nope", serializer=2))
    with pytest.raises(DecodeError, match="cannot deserialize json body"):
        Codec("json").decode(craft(b'"\xff"', serializer=2))  # not UTF-8


def test_wrong_input_type_is_a_decode_error() -> None:
    with pytest.raises(DecodeError, match="str"):
        Codec().decode("not bytes")  # type: ignore[arg-type]
    with pytest.raises(DecodeError):
        Codec().decode(None)  # type: ignore[arg-type]


def test_non_byte_memoryview_is_read_as_bytes() -> None:
    import array

    codec = Codec("msgpack", None)
    data = codec.encode("abcd")  # 8 + 5 bytes
    padded = data + b"\x00" * (-len(data) % 4)
    words = memoryview(array.array("I", padded))
    with pytest.raises(DecodeError, match="length mismatch"):  # the padding is extra bytes
        codec.decode(words)
    words = memoryview(array.array("I", data[:12]))
    with pytest.raises(DecodeError):
        codec.decode(words)


def test_bytearray_is_not_left_locked() -> None:
    codec = Codec()
    buffer = bytearray(codec.encode(VALUE))
    codec.decode(buffer)
    with pytest.raises(DecodeError):
        codec.decode(buffer[:5])
    buffer.extend(b"more")  # BufferError if decode left a view open


# --- signing ---------------------------------------------------------------------------------


def test_unsigned_value_refused_by_signed_codec() -> None:
    data = Codec().encode(VALUE)
    with pytest.raises(DecodeError, match="not signed"):
        Codec(signing_key=KEY).decode(data)


def test_hand_crafted_unsigned_pickle_is_refused() -> None:
    class Boom:
        def __reduce__(self) -> tuple[Any, tuple[str]]:
            return (sys.exit, ("pickle executed",))

    evil = craft(pickle.dumps(Boom()), serializer=3)
    codec = Codec("pickle", signing_key=KEY)
    with pytest.raises(DecodeError, match="not signed"):
        codec.decode(evil)
    # claiming to be signed, with a signature made without the key
    forged = craft(b"\x00" * 32 + pickle.dumps(Boom()), serializer=3, flags=1)
    forged = forged[:4] + struct.pack(">I", len(pickle.dumps(Boom()))) + forged[8:]
    with pytest.raises(DecodeError, match="bad signature"):
        codec.decode(forged)


def test_value_signed_with_another_key_is_refused() -> None:
    data = Codec(signing_key=b"other key").encode(VALUE)
    with pytest.raises(DecodeError, match="bad signature"):
        Codec(signing_key=KEY).decode(data)


def test_str_key_equals_its_utf8_bytes() -> None:
    data = Codec(signing_key="clé").encode(VALUE)
    assert Codec(signing_key="clé".encode()).decode(data)[0] == VALUE


# --- encode errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("serializer", "value", "named"),
    [
        ("msgpack", object(), "object"),
        ("msgpack", {"a": {1, 2}}, "set"),
        ("json", {"a": b"bytes"}, "bytes"),
        ("json", {1j: 1}, "complex"),
    ],
)
def test_unserializable_value(serializer: str, value: Any, named: str) -> None:
    with pytest.raises(InvalidTypeError, match=f"with {serializer}") as info:
        Codec(serializer).encode(value)
    assert named in str(info.value)


def test_unpicklable_value() -> None:
    with pytest.raises(InvalidTypeError, match="cannot encode a value of type function"):
        Codec("pickle", signing_key=KEY).encode(lambda: None)


# --- constructor errors --------------------------------------------------------------------


def test_pickle_without_key_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="signing_key") as info:
        Codec("pickle")
    assert "execute code" in str(info.value)
    with pytest.raises(InvalidArgumentError, match="signing_key"):
        Codec(pickle)  # type: ignore[arg-type]  # the module itself counts as "pickle"


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"serializer": "yaml"}, InvalidArgumentError, "unknown serializer 'yaml'.*'msgpack'"),
        ({"serializer": 3}, InvalidTypeError, "int has no callable dumps or loads"),
        ({"serializer": json}, InvalidArgumentError, None),
        ({"compression": "zstd"}, InvalidArgumentError, "unknown compression 'zstd'.*'lz4'"),
        ({"compression": 1}, InvalidTypeError, "compression must be"),
        ({"compress_min_bytes": -1}, InvalidArgumentError, "compress_min_bytes must be 0 or more"),
        ({"compress_min_bytes": 1.5}, InvalidTypeError, "compress_min_bytes must be an int"),
        ({"compress_min_bytes": True}, InvalidTypeError, "compress_min_bytes must be an int"),
        ({"signing_key": b""}, InvalidArgumentError, "signing_key must not be empty"),
        ({"signing_key": ""}, InvalidArgumentError, "signing_key must not be empty"),
        ({"signing_key": 42}, InvalidTypeError, "signing_key must be bytes or str"),
    ],
)
def test_bad_arguments(kwargs: dict[str, Any], error: type[Exception], message: str | None) -> None:
    if kwargs.get("serializer") is json:
        # The json module's dumps returns str: accepted as an object, refused at encode.
        with pytest.raises(InvalidTypeError, match="dumps returned str"):
            Codec(**kwargs).encode(1)
        return
    with pytest.raises(error, match=message):
        Codec(**kwargs)


def test_custom_object_missing_loads() -> None:
    class DumpsOnly:
        def dumps(self, value: Any) -> bytes:
            return b""

    with pytest.raises(InvalidTypeError, match="DumpsOnly has no callable loads"):
        Codec(DumpsOnly())  # type: ignore[arg-type]


def test_errors_are_helix_errors() -> None:
    assert issubclass(DecodeError, HelixError)
    assert issubclass(DecodeError, ValueError)


def test_repr() -> None:
    assert repr(Codec("json", "gzip", 64, signing_key=KEY)) == (
        "Codec(serializer='json', compression='gzip', compress_min_bytes=64, signed)"
    )


def test_import_is_light() -> None:
    code = (
        "import sys, helixrt.codec; "
        "print(sorted(m for m in ('msgpack', 'lz4', 'pickle', 'json', 'hmac') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_msgpack_says_how_to_install() -> None:
    code = (
        "import sys; sys.modules['msgpack'] = None\n"
        "from helixrt.codec import Codec\n"
        "try:\n"
        "    Codec()\n"
        "except ImportError as exc:\n"
        "    from helixrt.errors import HelixError\n"
        "    assert isinstance(exc, HelixError)\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install helixrt[redis]" in out.stdout


@pytest.mark.parametrize("serializer", ["msgpack", "json"])
@pytest.mark.parametrize("compression", ["lz4", None])
@pytest.mark.parametrize("expires_at", [None, 1_900_000_000.125])
def test_the_rust_reader_of_common_values_agrees_with_the_python_one(
    serializer: str, compression: str | None, expires_at: float | None
) -> None:
    from helixrt import _core

    codec = Codec(serializer, compression)
    data = codec.encode(VALUE, expires_at)
    serializer_id = data[1]
    framed = _core.unframe(data, serializer_id)
    assert framed is not None, "an unsigned lz4 or plain value is read in Rust"
    assert framed[1] == expires_at
    # bytes take the Rust path, a bytearray the Python one.
    assert codec.decode(data) == codec.decode(bytearray(data)) == (VALUE, expires_at)


def test_the_rust_reader_leaves_gzip_signed_and_damaged_values_to_python() -> None:
    from helixrt import _core

    gzip = Codec("msgpack", "gzip").encode(VALUE)
    signed = Codec("msgpack", "lz4", signing_key=KEY).encode(VALUE)
    lz4_value = Codec("msgpack", "lz4").encode(VALUE)
    assert lz4_value[2] == 1, "the value is lz4-compressed"
    damaged = lz4_value[:8] + b"\xff" * 32  # no lz4 block: a match before any literal
    for data in (gzip, signed, damaged, lz4_value[:-1], lz4_value + b"x"):
        assert _core.unframe(data, 1) is None
    assert _core.unframe(lz4_value, 2) is None, "another serializer's value"
    assert Codec("msgpack", "gzip").decode(gzip) == (VALUE, None)
    with pytest.raises(DecodeError, match="lz4 decompression failed"):
        Codec("msgpack", "lz4").decode(damaged)
