"""Leases: which instance serves which partition, kept in NATS's key-value store.

The bucket ``{prefix}_LEASES`` has a TTL (``lease_ttl_s``) on every entry:
- ``partition.{p}`` holds the id of the instance serving partition p. It is taken with a
  create (only if no one holds it) and renewed with a revision-checked update, so two instances
  can never both believe they hold it: a renewal that finds another revision has lost it.
- ``instance.{id}`` is each live instance's presence, renewed alongside; the fair share of
  partitions is counted over these.
An instance that dies stops renewing; its entries age out after the TTL and the others take
its partitions. ``plan`` decides what to take and what to give up; ``Leases`` does the I/O.

A lease is trusted locally only until ``valid_until``: the time its last renewal was *sent*
plus the TTL, less a margin. The server expires it no earlier than that, so an instance stops
serving a partition before anyone else can take it, even when cut off from NATS. That deadline
is the partition's ``Fence``: a file the coordinator rewrites at every renewal, which the
partition's readers (ingress, gateway) check before every fetch. A file, not a message: a
reader's mailbox may lag behind by seconds exactly when it is busiest, and the fence must not.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import uuid
from collections.abc import Iterable
from pathlib import Path

import msgspec
from nats.js import JetStreamContext
from nats.js.errors import (
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NoKeysError,
)
from nats.js.kv import KeyValue

from service.logs import Log
from service.partitions import Share
from service.processes import Members

log = Log(__name__)

PARTITION_KEY = "partition."
INSTANCE_KEY = "instance."
# Renewals per TTL: a missed one or two still leave the lease valid.
RENEWALS_PER_TTL = 5
# Renewals of a present id seen while joining that make it a live instance's: a dead one can
# have one more land (sent, not yet written, when it died), never two (each waits for its ack).
LIVE_RENEWALS = 2
# Taken off a lease's local validity: a renewal's round trip and the server's expiry timer.
SAFETY_MARGIN_S = 1.0
LOST_ERRORS = (KeyWrongLastSequenceError, KeyNotFoundError)


class DuplicateInstance(Exception):
    """Another live instance has this instance's id."""


class Plan(msgspec.Struct, frozen=True):
    take: list[int]
    release: list[int]


def plan(me: str, partitions: int, live: Iterable[str], holders: dict[int, str]) -> Plan:
    """What ``me`` should take and give up so that every live instance serves between
    floor(P/n) and ceil(P/n) partitions. Free partitions are taken up to ceil; only the
    instance serving the most (ties: the highest id) gives one up, one per round, and only
    when it holds more than ceil or someone holds fewer than floor: no ping-pong."""
    alive = sorted({*live, me})
    low, high = partitions // len(alive), math.ceil(partitions / len(alive))
    counts = {instance: 0 for instance in alive}
    for holder in holders.values():
        if holder in counts:
            counts[holder] += 1
    mine = sorted(p for p, holder in holders.items() if holder == me)
    free = [p for p in range(partitions) if p not in holders]
    take = free[: max(0, high - len(mine))]
    busiest = max(alive, key=lambda instance: (counts[instance], instance))
    starved = any(count < low for count in counts.values())
    release = [mine[-1]] if busiest == me and mine and (len(mine) > high or (starved and len(mine) > low)) else []
    return Plan(take, release)


class Fence:
    """One partition's lease as the processes of its instance see it: a deadline on the host's
    monotonic clock (shared by every process), in ``run_dir/leases/partition-{p}``. No path:
    a single instance, always valid."""

    def __init__(self, path: Path | None) -> None:
        self.path = path

    @classmethod
    def of(cls, run_dir: str, share: Share) -> Fence:
        return cls(None if share.whole else Path(run_dir) / "leases" / f"partition-{share.partition}")

    def valid(self) -> bool:
        if self.path is None:
            return True
        try:
            return time.monotonic() < float(self.path.read_text())
        except (OSError, ValueError):  # not written yet, or being replaced: not valid
            return False

    def hold_until(self, deadline: float) -> None:
        """Written whole or not at all (a reader never sees half a number)."""
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        draft = self.path.with_suffix(".new")
        draft.write_text(f"{deadline:.6f}")
        os.replace(draft, self.path)

    def close(self) -> None:
        """Nothing more is read under this lease, from now on."""
        self.hold_until(0.0)


def tree_members(run_dir: str, share: Share) -> Members:
    """The processes of the tree serving ``share`` here: killed at once when it must stop."""
    return Members(Path(run_dir) / "trees" / f"partition-{share.partition}-{share.tree}")


class Lease(msgspec.Struct):
    revision: int
    valid_until: float  # monotonic


class Leases:
    """This instance's leases in the bucket (on an asyncio loop)."""

    def __init__(self, js: JetStreamContext, bucket: str, me: str, partitions: int, ttl_s: float) -> None:
        self.js, self.bucket, self.me, self.partitions, self.ttl_s = js, bucket, me, partitions, ttl_s
        self.kv: KeyValue | None = None
        self.held: dict[int, Lease] = {}
        # Written into the presence entry: another process with the same id is told apart.
        self.token = uuid.uuid4().hex.encode()

    @property
    def interval_s(self) -> float:
        return self.ttl_s / RENEWALS_PER_TTL

    async def open(self) -> KeyValue:
        if self.kv is None:
            try:
                self.kv = await self.js.key_value(self.bucket)
            except BucketNotFoundError:
                self.kv = await self.js.create_key_value(bucket=self.bucket, ttl=self.ttl_s, history=1)
        return self.kv

    def _valid_from(self, sent: float) -> float:
        return sent + self.ttl_s - SAFETY_MARGIN_S

    async def renew(self) -> list[int]:
        """Renew presence and every lease held; the partitions lost (another revision, or not
        renewed in time)."""
        kv = await self.open()
        sent = time.monotonic()
        await kv.put(INSTANCE_KEY + self.me, self.token)
        lost = []
        for partition, lease in list(self.held.items()):
            try:
                lease.revision = await kv.update(PARTITION_KEY + str(partition), self.me.encode(), last=lease.revision)
                lease.valid_until = self._valid_from(sent)
            except LOST_ERRORS as exc:
                log.error("lease of partition %d lost: %s", partition, exc)
                lost.append(partition)
            except Exception as exc:  # NATS away: still ours until valid_until
                if time.monotonic() >= lease.valid_until:
                    log.error("lease of partition %d expired: not renewed since %s", partition, exc)
                    lost.append(partition)
        for partition in lost:
            del self.held[partition]
        return lost

    async def join(self) -> None:
        """Announce this instance. Its id may still be present from a run that died: that entry
        is no longer renewed, and is waited for until the server expires it, or for a TTL and
        a margin if the server's expiry runs late. Renewed twice meanwhile (its revision moves):
        another live instance uses the same id, and this one refuses to start. Once is not
        enough: the dead run's last renewal may still have been on its way to a slow server."""
        kv = await self.open()
        found = await self._presence(kv)
        renewals = 0
        deadline = time.monotonic() + self.ttl_s + SAFETY_MARGIN_S
        while found is not None and time.monotonic() < deadline:
            log.warning("instance id %s is still present (a run that died?): waiting for it to expire", self.me)
            await asyncio.sleep(self.interval_s)
            now = await self._presence(kv)
            if now is None:
                break
            renewals += now != found
            if renewals >= LIVE_RENEWALS:
                raise DuplicateInstance(f"another live instance has the id {self.me!r}: give each instance its own instance_id")
            found = now
        await kv.put(INSTANCE_KEY + self.me, self.token)

    async def _presence(self, kv: KeyValue) -> int | None:
        """The revision of this id's presence entry; None if there is none."""
        try:
            entry = await kv.get(INSTANCE_KEY + self.me)
        except KeyNotFoundError:
            return None
        return entry.revision

    async def look(self) -> tuple[set[str], dict[int, str]]:
        """The live instances and who holds each partition, as the bucket says now."""
        kv = await self.open()
        try:
            keys = await kv.keys()
        except NoKeysError:
            keys = []
        live = {key[len(INSTANCE_KEY) :] for key in keys if key.startswith(INSTANCE_KEY)}
        holders = {}
        for key in keys:
            if key.startswith(PARTITION_KEY):
                try:
                    entry = await kv.get(key)
                except KeyNotFoundError:
                    continue  # expired since the listing
                if entry.value:
                    holders[int(key[len(PARTITION_KEY) :])] = entry.value.decode()
        return live, holders

    async def take(self, partition: int) -> bool:
        """Take a free partition; False if someone else was quicker."""
        kv = await self.open()
        sent = time.monotonic()
        try:
            revision = await kv.create(PARTITION_KEY + str(partition), self.me.encode())
        except KeyWrongLastSequenceError:
            return False
        self.held[partition] = Lease(revision, self._valid_from(sent))
        return True

    async def give_up(self, partition: int) -> None:
        """Hand a partition back (its tree has stopped): deleted only if still ours."""
        lease = self.held.pop(partition, None)
        if lease is None:
            return
        kv = await self.open()
        try:
            await kv.delete(PARTITION_KEY + str(partition), last=lease.revision)
        except Exception as exc:  # it expires by itself after the TTL
            log.warning("lease of partition %d not handed back (%s): it expires in %.0fs", partition, exc, self.ttl_s)

    async def leave(self) -> None:
        """A clean stop: the presence goes (the leases were given up one by one)."""
        kv = await self.open()
        try:
            await kv.delete(INSTANCE_KEY + self.me)
        except Exception as exc:
            log.warning("presence of %s not removed (%s): it expires in %.0fs", self.me, exc, self.ttl_s)
