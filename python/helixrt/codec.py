"""The tiered cache's value codec: how a value becomes the bytes stored in Redis (L2), and back.

A stored value is a small versioned header followed by the body (the serialized value, maybe
compressed), so values written with other settings (another compression, no compression, a later
format) are recognised rather than misread, and a fleet can change `compression=` in a rolling
deploy: decode reads every known compression, whatever this codec writes.

    byte 0      format version (1)
    byte 1      serializer id: msgpack 1, json 2, pickle 3, custom 4
    byte 2      compression id: none 0, lz4 1, gzip 2
    byte 3      flags: bit 0 signed, bit 1 has expiry
    bytes 4-7   length of the uncompressed body, u32 big-endian
    [8 bytes]   expires_at, u64 big-endian milliseconds since the epoch (if has expiry)
    [32 bytes]  HMAC-SHA256 of everything before it plus the body (if signed)
    body

It does not talk to Redis, keep statistics beyond its two byte counters, or decide lifetimes:
the TieredCache does. msgpack and lz4 are imported when a codec first needs them
(`pip install helixrt[redis]`), so `import helixrt.codec` loads only the standard library and
the Rust core. The common frame on the read path (unsigned, lz4 or uncompressed) is read by the
Rust core (`_core.unframe`); everything else, and every damaged value, by `_decode` here.
"""

from __future__ import annotations

import functools
import math
import struct
import sys
import zlib
from typing import TYPE_CHECKING, Any, Protocol, cast

from helixrt import _core
from helixrt.errors import HelixError, InvalidArgumentError, InvalidTypeError

if TYPE_CHECKING:
    import hmac
    from collections.abc import Callable

    _Dumps = Callable[[Any], bytes]
    _Loads = Callable[[Any], Any]

# json, pickle, hmac, msgpack and lz4 are imported by the first codec that needs them: a cache
# that never signs, say, does not pay for loading hashlib.

__all__ = ["Codec", "DecodeError", "MissingDependencyError", "Serializer"]


class DecodeError(HelixError, ValueError):
    """Bytes that are not a value this codec can read: the message says what was wrong."""


class MissingDependencyError(HelixError, ImportError):
    """An optional dependency of the chosen serializer or compression is not installed."""


class Serializer(Protocol):
    """What a custom `serializer=` provides (stored with serializer id 4)."""

    def dumps(self, value: Any, /) -> bytes: ...

    def loads(self, data: bytes, /) -> Any: ...


FORMAT_VERSION = 1
_HEADER = struct.Struct(">BBBBI")
_EXPIRY = struct.Struct(">Q")
_SIGNATURE_SIZE = 32  # HMAC-SHA256
_SIGNED = 0x01
_HAS_EXPIRY = 0x02
_KNOWN_FLAGS = _SIGNED | _HAS_EXPIRY
_MAX_LENGTH = 0xFFFF_FFFF  # the header's u32
_MAX_EXPIRY_MS = 0xFFFF_FFFF_FFFF_FFFF

_SERIALIZER_IDS = {"msgpack": 1, "json": 2, "pickle": 3, "custom": 4}
_SERIALIZER_NAMES = {ident: name for name, ident in _SERIALIZER_IDS.items()}
_NONE, _LZ4, _GZIP = 0, 1, 2
_COMPRESSION_IDS = {"lz4": _LZ4, "gzip": _GZIP}
_COMPRESSION_NAMES = {_NONE: "none", _LZ4: "lz4", _GZIP: "gzip"}

# Level 6 (zlib's default): on 16-256 KiB LLM responses it stores 10-20% fewer bytes than
# level 1 for 3-6x the compression time; level 9 adds under 2% for twice the time again.
# Decompression costs the same at every level, and reads outnumber writes in a cache; whoever
# wants speed over size picks lz4.
_GZIP_LEVEL = 6
_GZIP_WBITS = 31  # the gzip container, so any gzip reader (Go, Rust, zcat) can read the body
# The most a body can grow on decompression: lz4 block at most ~255x, deflate at most ~1032x.
# Checked before decompressing, so a forged header cannot make decode allocate 4 GiB.
_MAX_RATIO = {_LZ4: 255, _GZIP: 1032}

_INSTALL_HINT = "pip install helixrt[redis]"


def _require(module: str, purpose: str) -> Any:
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as exc:
        raise MissingDependencyError(
            f"{purpose} needs the {module.split('.')[0]} package: {_INSTALL_HINT}"
        ) from exc


class Codec:
    """Encodes values to the tiered cache's L2 bytes and decodes them back.

    `serializer`: "msgpack" (the default: compact, fast, no code execution), "json" (compact
    UTF-8, readable by any language), "pickle" (any Python object; only with `signing_key`,
    because unpickling runs code), or an object with `dumps(value) -> bytes` and
    `loads(bytes) -> value` (a custom serializer that can run code, as pickle does, should be
    used with a `signing_key` too).
    `compression`: "lz4" (the default: fast), "gzip" (level 6: smaller, several times slower to
    write) or None. Only bodies of at least `compress_min_bytes` (default 512) are compressed,
    and kept compressed only when that made them smaller.
    `signing_key`: when given, every value is signed with HMAC-SHA256 and decode refuses values
    without a valid signature, so only holders of the key can plant values in Redis.

    `bytes_before` and `bytes_after` total the body sizes before and after compression over
    every `encode`. A codec is safe to share between threads (the counters may miss an update
    when two threads encode at once).
    """

    __slots__ = (
        "_compress",
        "_compression_id",
        "_dumps",
        "_key",
        "_loads",
        "_mac",
        "_min_bytes",
        "_serializer_id",
        "_serializer_name",
        "bytes_after",
        "bytes_before",
    )

    def __init__(
        self,
        serializer: str | Serializer = "msgpack",
        compression: str | None = "lz4",
        compress_min_bytes: int = 512,
        *,
        signing_key: bytes | str | None = None,
    ) -> None:
        self._key = _signing_key(signing_key)
        self._mac = None if self._key is None else _new_mac(self._key)
        self._serializer_name, self._dumps, self._loads = _serializer(serializer, self._key)
        self._serializer_id = _SERIALIZER_IDS[self._serializer_name]
        self._compression_id, self._compress = _compression(compression)
        if isinstance(compress_min_bytes, bool) or not isinstance(compress_min_bytes, int):
            raise InvalidTypeError(
                "compress_min_bytes must be an int (a size in bytes), "
                f"not {type(compress_min_bytes).__name__}"
            )
        if compress_min_bytes < 0:
            raise InvalidArgumentError(
                f"compress_min_bytes must be 0 or more (bytes), got {compress_min_bytes}"
            )
        self._min_bytes = compress_min_bytes
        self.bytes_before = 0
        self.bytes_after = 0

    @property
    def serializer_name(self) -> str:
        """The serializer: "msgpack", "json", "pickle" or "custom"."""
        return self._serializer_name

    @property
    def compression_name(self) -> str | None:
        """The compression written: "lz4", "gzip", or None."""
        return None if self._compression_id == _NONE else _COMPRESSION_NAMES[self._compression_id]

    def __repr__(self) -> str:
        signed = ", signed" if self._key is not None else ""
        return (
            f"Codec(serializer={self._serializer_name!r}, compression={self.compression_name!r}, "
            f"compress_min_bytes={self._min_bytes}{signed})"
        )

    def encode(self, value: Any, expires_at: float | None = None) -> bytes:
        """The bytes to store for `value`; `expires_at` (seconds since the epoch, kept to the
        millisecond) travels with it, so a reader learns the value's remaining lifetime."""
        try:
            body = self._dumps(value)
        except Exception as exc:
            raise InvalidTypeError(
                f"cannot encode a value of type {type(value).__qualname__} "
                f"with {self._serializer_name}: {exc}"
            ) from exc
        length = len(body)
        if length > _MAX_LENGTH:
            raise InvalidArgumentError(
                f"value is too large to store: {length} bytes serialized, at most {_MAX_LENGTH}"
            )
        compression = _NONE
        if self._compress is not None and length >= self._min_bytes:
            packed = self._compress(body)
            if len(packed) < length:  # incompressible bodies are stored as they are
                body, compression = packed, self._compression_id
        self.bytes_before += length
        self.bytes_after += len(body)
        flags = 0 if self._mac is None else _SIGNED
        if expires_at is None:
            prefix = _HEADER.pack(FORMAT_VERSION, self._serializer_id, compression, flags, length)
        else:
            prefix = _HEADER.pack(
                FORMAT_VERSION, self._serializer_id, compression, flags | _HAS_EXPIRY, length
            ) + _EXPIRY.pack(_expiry_ms(expires_at))
        if self._mac is None:
            return prefix + body
        mac = self._mac.copy()
        mac.update(prefix)
        mac.update(body)
        return b"".join((prefix, mac.digest(), body))

    def decode(self, data: bytes | bytearray | memoryview) -> tuple[Any, float | None]:
        """The value stored in `data` and its expiry (seconds since the epoch, or None).

        Raises DecodeError, and nothing else, for anything that is not a value this codec
        can read: foreign or damaged bytes, another serializer, a bad or missing signature.
        """
        try:
            if type(data) is bytes:  # what redis-py returns: immutable, so no view to release
                if self._mac is None:
                    # The common frame (unsigned, lz4 or none) is read in Rust; the rest, and
                    # every damaged value, below.
                    framed = _core.unframe(data, self._serializer_id)
                    if framed is not None:
                        body, expires_at = framed
                        return self._deserialize(body), expires_at
                return self._decode(memoryview(data))
            # A view left open (in a traceback, say) would stop the caller resizing a bytearray.
            with memoryview(data) as view:
                if view.ndim != 1 or view.itemsize != 1:
                    view = view.cast("B")  # slice by bytes, whatever the caller's format
                return self._decode(view)
        except DecodeError:
            raise
        except Exception as exc:
            # Reached by input of the wrong type, or a failure no check above foresaw: bad
            # input must still surface as DecodeError, which a cache treats as a miss.
            raise DecodeError(f"cannot decode value: {type(exc).__name__}: {exc}") from exc

    def _decode(self, view: memoryview) -> tuple[Any, float | None]:
        size = len(view)
        if size < _HEADER.size:
            raise DecodeError(f"truncated value: {size} bytes, shorter than the 8-byte header")
        version, serializer, compression, flags, length = _HEADER.unpack_from(view)
        if version != FORMAT_VERSION:
            raise DecodeError(
                f"unknown format version {version}: this helixrt reads version {FORMAT_VERSION}"
            )
        if serializer not in _SERIALIZER_NAMES:
            raise DecodeError(f"unknown serializer id {serializer}: known ids are 1 to 4")
        if compression not in _COMPRESSION_NAMES:
            raise DecodeError(f"unknown compression id {compression}: known ids are 0, 1, 2")
        if flags & ~_KNOWN_FLAGS:
            raise DecodeError(f"unknown flags {flags:#04x}: known are 0x01 and 0x02")
        offset = _HEADER.size
        expires_at = None
        if flags & _HAS_EXPIRY:
            if size < offset + _EXPIRY.size:
                raise DecodeError(f"truncated value: {size} bytes, too short for its expiry")
            expires_at = _EXPIRY.unpack_from(view, offset)[0] / 1000
            offset += _EXPIRY.size
        if flags & _SIGNED:
            offset = self._verify(view, offset)
        elif self._mac is not None:
            raise DecodeError("value is not signed, and this codec accepts only signed values")
        if serializer != self._serializer_id:
            raise DecodeError(
                f"value was written by the {_SERIALIZER_NAMES[serializer]} serializer, "
                f"this codec reads {self._serializer_name}"
            )
        body: memoryview | bytes = view[offset:]
        if compression != _NONE:
            body = _decompress(compression, body, length)
        elif len(body) != length:
            raise DecodeError(
                f"length mismatch (truncated?): header says {length} body bytes, found {len(body)}"
            )
        return self._deserialize(body), expires_at

    def _deserialize(self, body: memoryview | bytes) -> Any:
        try:
            return self._loads(body)
        except Exception as exc:
            raise DecodeError(
                f"cannot deserialize {self._serializer_name} body: {type(exc).__name__}: {exc}"
            ) from exc

    def _verify(self, view: memoryview, offset: int) -> int:
        """Checks the signature at `offset`; returns where the body starts."""
        if self._mac is None:
            raise DecodeError(
                "value is signed, and this codec has no signing_key to check it: "
                "give it the writer's signing_key"
            )
        body_at = offset + _SIGNATURE_SIZE
        if len(view) < body_at:
            raise DecodeError(f"truncated value: {len(view)} bytes, too short for its signature")
        mac = self._mac.copy()
        mac.update(view[:offset])
        mac.update(view[body_at:])
        import hmac  # loaded by the constructor; constant time, so no timing oracle for forgers

        if not hmac.compare_digest(mac.digest(), view[offset:body_at]):
            raise DecodeError("bad signature: the value was altered or signed with another key")
        return body_at


def _new_mac(key: bytes) -> hmac.HMAC:
    import hashlib
    import hmac

    # Keyed once; each value then pays for a copy, not for hashing the key again.
    return hmac.new(key, digestmod=hashlib.sha256)


def _decompress(compression: int, body: memoryview | bytes, length: int) -> bytes:
    if length > len(body) * _MAX_RATIO[compression] + 64:
        raise DecodeError(
            f"length mismatch: header says {length} body bytes, more than "
            f"{len(body)} {_COMPRESSION_NAMES[compression]} bytes can hold"
        )
    try:
        if compression == _LZ4:
            out: bytes = _lz4_block().decompress(body, uncompressed_size=length)
        else:
            out = zlib.decompress(body, _GZIP_WBITS, max(length, 1))
    except MissingDependencyError as exc:
        raise DecodeError(f"cannot decompress lz4 value: {exc}") from exc
    except Exception as exc:
        raise DecodeError(
            f"{_COMPRESSION_NAMES[compression]} decompression failed (truncated or damaged): {exc}"
        ) from exc
    if len(out) != length:
        raise DecodeError(
            f"length mismatch: header says {length} body bytes, decompressed {len(out)}"
        )
    return out


_lz4: Any = None


def _lz4_block() -> Any:
    # Imported once, on first use: by an lz4 codec, or by any codec reading an lz4 value.
    global _lz4
    if _lz4 is None:
        _lz4 = _require("lz4.block", 'compression="lz4"')
    return _lz4


def _signing_key(key: object) -> bytes | None:
    if key is None:
        return None
    if isinstance(key, str):
        key = key.encode()
    if not isinstance(key, bytes | bytearray):
        raise InvalidTypeError(
            f"signing_key must be bytes or str (a secret shared by every instance), "
            f"not {type(key).__name__}"
        )
    if not key:
        raise InvalidArgumentError("signing_key must not be empty: give a secret, or None")
    return bytes(key)


def _serializer(serializer: object, key: bytes | None) -> tuple[str, _Dumps, _Loads]:
    if serializer is sys.modules.get("pickle"):  # the module itself: the rules of "pickle"
        serializer = "pickle"
    if isinstance(serializer, str):
        if serializer == "msgpack":
            return _msgpack()
        if serializer == "json":
            return _json()
        if serializer == "pickle":
            return _pickle(key)
        raise InvalidArgumentError(
            f"unknown serializer {serializer!r}: accepted are 'msgpack', 'json', 'pickle', "
            "or an object with dumps(value) -> bytes and loads(bytes) -> value"
        )
    missing = [name for name in ("dumps", "loads") if not callable(getattr(serializer, name, None))]
    if missing:
        raise InvalidTypeError(
            f"serializer must be 'msgpack', 'json', 'pickle' or an object with "
            f"dumps(value) -> bytes and loads(bytes) -> value; "
            f"{type(serializer).__name__} has no callable {' or '.join(missing)}"
        )
    custom = cast(Serializer, serializer)
    return "custom", _custom_dumps(custom.dumps), _custom_loads(custom.loads)


def _msgpack() -> tuple[str, _Dumps, _Loads]:
    msgpack = _require("msgpack", 'serializer="msgpack"')

    # partial, not a def: one Python frame fewer on every L2 hit.
    # strict_map_key=False: a dict with int keys (token ids, say) must come back.
    dumps = functools.partial(msgpack.packb, use_bin_type=True)
    loads = functools.partial(msgpack.unpackb, raw=False, strict_map_key=False)
    return "msgpack", dumps, loads


def _json() -> tuple[str, _Dumps, _Loads]:
    import json

    encoder = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
    decoder = json.JSONDecoder()

    def dumps(value: Any) -> bytes:
        return encoder.encode(value).encode()

    def loads(data: Any) -> Any:
        return decoder.decode(str(data, "utf-8"))

    return "json", dumps, loads


def _pickle(key: bytes | None) -> tuple[str, _Dumps, _Loads]:
    if key is None:
        raise InvalidArgumentError(
            'serializer="pickle" needs a signing_key: unpickling runs code, so reading unsigned '
            "pickle from Redis lets anyone who can write to Redis execute code in this process; "
            'give signing_key=..., or use "msgpack" or "json"'
        )
    import pickle

    def dumps(value: Any) -> bytes:
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    return "pickle", dumps, pickle.loads


def _custom_dumps(user_dumps: Callable[[Any], object]) -> _Dumps:
    def dumps(value: Any) -> bytes:
        data = user_dumps(value)
        if isinstance(data, bytes):
            return data
        if isinstance(data, bytearray | memoryview):
            return bytes(data)
        raise TypeError(f"serializer.dumps returned {type(data).__name__}, it must return bytes")

    return dumps


def _custom_loads(user_loads: Callable[[bytes], Any]) -> _Loads:
    def loads(data: Any) -> Any:
        return user_loads(bytes(data))  # the protocol promises bytes, not a memoryview

    return loads


def _compression(compression: object) -> tuple[int, Callable[[bytes], bytes] | None]:
    if compression is None:
        return _NONE, None
    if compression == "lz4":
        block = _lz4_block()

        def lz4(body: bytes) -> bytes:
            # lz4.block over lz4.frame: the header keeps the length, so the frame's own
            # header, size and checksum are redundant; block decodes 1-16 KiB bodies 20-30%
            # faster and stores up to 4% fewer bytes.
            data: bytes = block.compress(body, store_size=False)
            return data

        return _LZ4, lz4
    if compression == "gzip":

        def gzip(body: bytes) -> bytes:
            return zlib.compress(body, _GZIP_LEVEL, _GZIP_WBITS)

        return _GZIP, gzip
    if isinstance(compression, str):
        raise InvalidArgumentError(
            f"unknown compression {compression!r}: accepted are 'lz4', 'gzip' or None"
        )
    raise InvalidTypeError(
        f"compression must be 'lz4', 'gzip' or None, not {type(compression).__name__}"
    )


def _expiry_ms(expires_at: object) -> int:
    if isinstance(expires_at, bool) or not isinstance(expires_at, int | float):
        raise InvalidTypeError(
            f"expires_at must be seconds since the epoch (float) or None, "
            f"not {type(expires_at).__name__}"
        )
    ms = round(expires_at * 1000) if math.isfinite(expires_at) else -1
    if not 0 <= ms <= _MAX_EXPIRY_MS:
        raise InvalidArgumentError(
            f"expires_at must be a finite time since the epoch, 0 or later, got {expires_at!r}"
        )
    return ms
