"""Transient or permanent: what a failed write means, and where an item no server takes goes.

A transient failure (the server is down, slow or unreachable) is retried with a capped back-off
until the server is back: the outbox holds everything meanwhile, so nothing is lost. A permanent
one (the server refused the item itself: a value out of range, a message too large, a bad
subject) cannot succeed on a retry; the writers then try the batch's items one by one and
dead-letter the one that is refused (``DeadLetters``), so nothing behind it waits. An error
that is neither known as transient nor as permanent is retried a bounded number of times
(UNCLASSIFIED_ATTEMPTS), then treated as permanent.
"""

from __future__ import annotations

import asyncio
import struct
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Any

import aiokafka.errors as kafka_errors
import msgspec
import nats.errors as nats_errors
from clickhouse_connect.driver import exceptions as clickhouse_errors

from messages.codec import encode
from service import metrics
from service.logs import Log

log = Log(__name__)

UNCLASSIFIED_ATTEMPTS = 8  # about 16 s with the writers' back-off

# ClickHouse's codes for data it will never accept: the row, not the server, is wrong
# (CANNOT_PARSE_*, TYPE_MISMATCH, ARGUMENT_OUT_OF_BOUND, CANNOT_CONVERT_TYPE, VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE,
# CANNOT_INSERT_NULL_IN_ORDINARY_COLUMN, VIOLATED_CONSTRAINT, ...).
CLICKHOUSE_DATA_ERRORS = frozenset({6, 27, 38, 41, 53, 69, 70, 72, 321, 349, 469})
PERMANENT_TYPES = (
    TypeError, ValueError, OverflowError, struct.error, msgspec.EncodeError,
    nats_errors.MaxPayloadError, nats_errors.BadSubjectError, nats_errors.BadHeaderError,
    clickhouse_errors.DataError, clickhouse_errors.ProgrammingError,
)  # fmt: skip
TRANSIENT_TYPES = (
    OSError, asyncio.TimeoutError, nats_errors.Error, clickhouse_errors.OperationalError, clickhouse_errors.StreamFailureError,
)  # fmt: skip


class Failure(Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    UNCLASSIFIED = "unclassified"


def classify(exc: BaseException) -> Failure:
    if isinstance(exc, kafka_errors.KafkaError):  # aiokafka says which of its errors a retry can cure
        # ... and a client-side timeout, or a sequence out of step (the archiver then starts a
        # fresh idempotent producer), is cured by one too.
        cured = (kafka_errors.KafkaConnectionError, kafka_errors.KafkaTimeoutError, kafka_errors.OutOfOrderSequenceNumber)
        return Failure.TRANSIENT if exc.retriable or isinstance(exc, cured) else Failure.PERMANENT
    if _clickhouse_code(exc) in CLICKHOUSE_DATA_ERRORS or isinstance(exc, PERMANENT_TYPES):
        return Failure.PERMANENT
    if isinstance(exc, (*TRANSIENT_TYPES, clickhouse_errors.DatabaseError)):
        # Any other refusal by ClickHouse is about the server, not the row: a table detached
        # or dropped (the store repairs the schema), too many parts, memory, readonly.
        return Failure.TRANSIENT
    return Failure.UNCLASSIFIED


def _clickhouse_code(exc: BaseException) -> int | None:
    """The server's error code, from its message ("Code: 53. DB::Exception: ..."), as both the
    HTTP client and the embedded engine report it."""
    text = str(exc)
    marker = text.find("Code: ")
    if marker < 0:
        return None
    digits = text[marker + 6 : marker + 12].split(".")[0].strip()
    return int(digits) if digits.isdigit() else None


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """An item a server refused for good, in ``dead-letters.jsonl`` of the run directory."""

    at: datetime
    role: str
    error: str
    item_type: str
    item: Any


class DeadLetters:
    """Appends each refused item, whole, with the error; an operator replays or fixes it from here."""

    def __init__(self, run_dir: str | Path, role: str) -> None:
        self.path = Path(run_dir) / "dead-letters.jsonl"
        self.role = role

    def add(self, item: Any, exc: BaseException) -> None:
        letter = DeadLetter(at=datetime.now(UTC), role=self.role, error=f"{type(exc).__name__}: {exc}"[:2000], item_type=type(item).__name__, item=item)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("ab") as out:
            out.write(encode(letter) + b"\n")
        metrics.SINK_DEAD_LETTERS.labels(self.role).inc()
        log.error("%s: dead-lettered a %s the server refused for good (%s) into %s", self.role, type(item).__name__, letter.error, self.path)
