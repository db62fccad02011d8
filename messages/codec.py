"""Strict decoding: every malformed or mistyped message becomes one precise, field-naming error."""

from __future__ import annotations

import re
from typing import Any, TypeVar

import msgspec

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_FIELD = re.compile(r"at `\$\.?([^`]*)`")


class ContractError(ValueError):
    """A message that breaks the contract. ``reason`` is a stable code, ``detail`` says what and where."""

    def __init__(self, reason: str, detail: str, field: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
        self.field = field


def decode(data: bytes | str, kind: type[T]) -> T:
    """Decode JSON into ``kind``; raise ContractError('malformed_json' | 'invalid_field', ...)."""
    try:
        return msgspec.json.decode(data, type=kind)
    except msgspec.ValidationError as exc:
        text = str(exc)
        match = _FIELD.search(text)
        raise ContractError("invalid_field", text, match.group(1) if match else None) from None
    except msgspec.DecodeError as exc:
        raise ContractError("malformed_json", str(exc)) from None


def encode(message: Any) -> bytes:
    return _encoder.encode(message)
