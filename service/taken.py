"""What the recorder has taken lately, so that it takes each event once and each order's
events in sequence.

Thespian loses a message now and then under load. The sender of a lost hand-over sends it
again once a later one is acknowledged (actors/base.py), but a sender that dies first never
does. If the recorder had taken the later hand-over meanwhile (often another actor's, holding
the order since), the order's history would keep a hole for good. So a hand-over whose first
event does not follow the last one taken of its order waits, unacknowledged, for the one
before it: from its sender, sent again, or from the order's revival, which goes on from the
last event recorded in sequence.

An order created before this recorder started may have history it never saw (a restart, a
partition taken over): its events are taken as they come, as is an order's first event, and
so are those of an order created no later than one forgotten (the memory is bounded).
"""

from __future__ import annotations

import uuid
from datetime import datetime

from messages.order import OrderEvent

# Event ids and orders remembered (bounded: the oldest forgotten first).
RECENT = 200_000


class Taken:
    def __init__(self, started_at: datetime, bound: int = RECENT) -> None:
        self.bound = bound
        self.event_ids: dict[str, None] = {}
        # order_id -> (the last seq taken, when the order was created), least recently taken first
        self.last_seq: dict[uuid.UUID, tuple[int, datetime]] = {}
        self.known_since = started_at  # orders created before this may have history not known here

    def has(self, event: OrderEvent) -> bool:
        return event.event_id in self.event_ids

    def follows(self, event: OrderEvent) -> bool:
        """Whether ``event`` may be taken now: the next of its order (or one taken before)."""
        last = self.last_seq.get(event.order_id)
        if last is None:
            return event.seq == 1 or event.order.created_at <= self.known_since
        return event.seq <= last[0] + 1

    def add(self, events: list[OrderEvent]) -> None:
        for event in events:
            self.event_ids[event.event_id] = None
            last, _ = self.last_seq.pop(event.order_id, (0, event.order.created_at))
            self.last_seq[event.order_id] = (max(last, event.seq), event.order.created_at)  # (re-inserted: the latest last)
        while len(self.event_ids) > self.bound:
            del self.event_ids[next(iter(self.event_ids))]
        while len(self.last_seq) > self.bound:
            _, created_at = self.last_seq.pop(next(iter(self.last_seq)))
            self.known_since = max(self.known_since, created_at)
