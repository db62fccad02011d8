"""The state file: the book, the quotes and the clock offset, as msgspec JSON, replaced atomically."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from simulator.book import BookState
from simulator.market import Quote


class SimState(msgspec.Struct, kw_only=True):
    book: BookState
    quotes: dict[str, Quote]
    clock_offset_s: float = 0.0


def load_state(path: str) -> SimState | None:
    file = Path(path)
    if not file.exists():
        return None
    return msgspec.json.decode(file.read_bytes(), type=SimState)


def save_state(path: str, state: SimState) -> None:
    file = Path(path)
    file.parent.mkdir(parents=True, exist_ok=True)
    temporary = file.with_name(file.name + ".tmp")
    temporary.write_bytes(msgspec.json.encode(state))
    # A crash mid-write leaves the previous state whole.
    os.replace(temporary, file)
