"""Frames: a 4-byte big-endian length, then a msgpack body of at most ``MAX_FRAME`` bytes holding one message.

Anything that is not a valid frame of a valid message raises ``ProtocolError``, and the receiving side closes
that one connection. The readers of a stream of frames are in ``aio`` (asyncio) and ``blocking``.
"""

from __future__ import annotations

import struct
from typing import TypeVar

import msgspec

from .errors import ProtocolError
from .messages import Message

MAX_FRAME = 16 * 1024 * 1024
MAX_HELLO = 64 * 1024  # before the token is checked, a peer may not make us buffer more than this
OUTPUT_CHUNK = 1024 * 1024  # a job's output (and a status --json) goes in pieces of at most this

HEADER = struct.Struct(">I")

M = TypeVar("M", bound=Message)

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


def encode(msg: Message) -> bytes:
    """One complete frame for ``msg``."""
    body = _encoder.encode(msg)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the {MAX_FRAME}-byte limit")
    return HEADER.pack(len(body)) + body


def decode(body: bytes) -> Message:
    """The message in one frame body; ``ProtocolError`` names what is wrong with it."""
    try:
        return _decoder.decode(body)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"invalid message: {exc}") from None


def body_length(header: bytes, max_size: int) -> int:
    """The length a frame header announces, if it is at most ``max_size``."""
    (length,) = HEADER.unpack(header)
    if length > max_size:
        raise ProtocolError(f"frame of {length} bytes exceeds the {max_size}-byte limit")
    return length


def expect(msg: Message, kind: type[M]) -> M:
    """``msg``, if it is the ``kind`` of message that must come next."""
    if not isinstance(msg, kind):
        raise ProtocolError(f"expected {kind.__struct_config__.tag}, got {type(msg).__name__}")
    return msg
