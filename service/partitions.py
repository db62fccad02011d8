"""Partitions: how several instances split the work, in NATS's own terms.

With ``partitions = N`` (N >= 1) the SIGNALS and BROKER streams rewrite the subject of every
message they store with NATS's ``partition()`` mapping, hashing the symbol token:

    signals.approved.EURUSD    ->  signals.partition.{p}.EURUSD
    broker.fill.EURUSD         ->  broker.partition.{p}.fill.EURUSD

so a signal and every piece of broker news about its symbol land in the same partition p, and
the one durable consumer of each partition's subjects is read by whichever instance holds that
partition's lease (service.leases). Everything an order touches (its exposure, its position,
its resting orders) is per symbol, so a partition's state is whole in the instance that owns it.

``partition_of`` is the server's hash (FNV-1a 32 of the token, modulo N), checked against the
server by tests/test_partitions.py: the service needs it for what it reads from ClickHouse.
With ``partitions = 0`` nothing is rewritten and one instance serves every symbol.
"""

from __future__ import annotations

import msgspec
from nats.js.api import SubjectTransform

SIGNAL_SOURCE = "signals.approved.*"
BROKER_SOURCE = "broker.*.*"
SIGNAL_PARTITIONED = "signals.partition"
BROKER_PARTITIONED = "broker.partition"

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193


def partition_of(symbol: str, partitions: int) -> int:
    """The partition NATS's ``partition(partitions, ...)`` maps the symbol token to."""
    digest = _FNV_OFFSET
    for byte in symbol.encode():
        digest = ((digest ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return digest % partitions


def signal_transform(partitions: int) -> SubjectTransform:
    return SubjectTransform(src=SIGNAL_SOURCE, dest=f"{SIGNAL_PARTITIONED}.{{{{partition({partitions},1)}}}}.{{{{wildcard(1)}}}}")


def broker_transform(partitions: int) -> SubjectTransform:
    return SubjectTransform(
        src=BROKER_SOURCE, dest=f"{BROKER_PARTITIONED}.{{{{partition({partitions},2)}}}}.{{{{wildcard(1)}}}}.{{{{wildcard(2)}}}}"
    )


def published_subject(stored: str) -> str:
    """The subject a message was published on, from the one its stream stored it under."""
    for partitioned, published in ((SIGNAL_PARTITIONED, "signals.approved"), (BROKER_PARTITIONED, "broker")):
        if stored.startswith(partitioned + "."):
            return f"{published}.{stored[len(partitioned) + 1 :].split('.', 1)[1]}"
    return stored


class Share(msgspec.Struct, frozen=True):
    """The part of the work one actor tree serves: partition ``partition`` of ``of``, or
    everything (``of == 0``, a single instance); ``tree`` tells the trees that served the
    same partition here one after the other apart."""

    partition: int = 0
    of: int = 0
    tree: int = 0

    @property
    def whole(self) -> bool:
        return self.of == 0

    def owns(self, symbol: str) -> bool:
        return self.whole or partition_of(symbol, self.of) == self.partition

    @property
    def name(self) -> str:
        """A suffix for what is this share's own: durable consumers, the outbox."""
        return "" if self.whole else f"_p{self.partition}"

    @property
    def signal_subject(self) -> str:
        """What this share's signal consumer reads (stored subjects)."""
        return "signals.approved.>" if self.whole else f"{SIGNAL_PARTITIONED}.{self.partition}.*"

    @property
    def broker_subject(self) -> str:
        return "broker.>" if self.whole else f"{BROKER_PARTITIONED}.{self.partition}.*.*"

    def __str__(self) -> str:
        return "every symbol" if self.whole else f"partition {self.partition} of {self.of}"


EVERYTHING = Share()
