"""The recorder's outbox: what it was handed, on disk until every sink has it.

Everything the recorder receives is appended to the open segment at once (a write to the
OS, which survives the process being killed). A flush to ClickHouse seals the segment as a
numbered batch; the batch file is deleted when the archive and the status subjects have
confirmed it and the position keeper has applied its fills. A recorder that starts finds the
batches and the open segment of the one before it and replays them: ClickHouse collapses rows
it already had, JetStream drops statuses it already had (message ids), the archive's readers
count an event_id once, and the keeper applies a deal once.
"""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from messages.order import Fill, OrderEvent
from messages.position import Position

OPEN_SEGMENT = "open.jsonl"


class Batch(msgspec.Struct, kw_only=True):
    events: list[OrderEvent] = msgspec.field(default_factory=list)
    deals: list[Fill] = msgspec.field(default_factory=list)
    positions: list[Position] = msgspec.field(default_factory=list)

    def extend(self, other: Batch) -> None:
        self.events += other.events
        self.deals += other.deals
        self.positions += other.positions

    def __len__(self) -> int:
        return len(self.events) + len(self.deals) + len(self.positions)


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Batch)


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        sealed = sorted(int(p.stem) for p in directory.glob("*.batch"))
        # Never a number an earlier recorder used: a late Delivered of its batch N (forwarded
        # as a dead letter) must not confirm this recorder's batch N.
        self.next_batch = max((sealed[-1] + 1) if sealed else 1, time.time_ns() // 1000)
        self._open = open(directory / OPEN_SEGMENT, "ab")
        # A SIGKILL can stop a large append part way (Linux ends a file write between pages for
        # a fatal signal): what this recorder appends starts on a line of its own, not glued
        # to the cut one, where it would be unreadable although acknowledged.
        if self._open.tell() and not (directory / OPEN_SEGMENT).read_bytes().endswith(b"\n"):
            self._open.write(b"\n")
            self._open.flush()

    def append(self, batch: Batch) -> None:
        self._open.write(_encoder.encode(batch) + b"\n")
        self._open.flush()

    def seal(self) -> int:
        """The open segment becomes batch N; a new segment opens."""
        self._open.close()
        batch_id = self.next_batch
        self.next_batch += 1
        (self.directory / OPEN_SEGMENT).rename(self._path(batch_id))
        self._open = open(self.directory / OPEN_SEGMENT, "ab")
        return batch_id

    def set_aside(self) -> Path | None:
        """What is in it is moved to a directory of its own, kept for an operator; None if
        there was nothing."""
        self._open.close()
        if not any(p.stat().st_size for p in self.directory.iterdir()):
            self._open = open(self.directory / OPEN_SEGMENT, "ab")
            return None
        aside = self.directory.with_name(f"{self.directory.name}.superseded-{time.time_ns() // 1000}")
        self.directory.rename(aside)
        self.directory.mkdir()
        self._open = open(self.directory / OPEN_SEGMENT, "ab")
        return aside

    def done(self, batch_id: int) -> None:
        self._path(batch_id).unlink(missing_ok=True)

    def leftovers(self) -> tuple[list[tuple[int, Batch]], Batch]:
        """What a previous recorder left: its sealed batches, and its open segment's content."""
        sealed = [(int(p.stem), _read(p)) for p in sorted(self.directory.glob("*.batch"), key=lambda p: int(p.stem))]
        return sealed, _read(self.directory / OPEN_SEGMENT)

    def _path(self, batch_id: int) -> Path:
        return self.directory / f"{batch_id:012d}.batch"


def _read(path: Path) -> Batch:
    batch = Batch()
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                batch.extend(_decoder.decode(line))
            except msgspec.DecodeError:
                continue  # a line cut short by a kill: the lines after it are whole (see Outbox)
    return batch
