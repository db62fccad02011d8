"""What every role shares: it learns where restarted peers live, tells its process id, counts
the messages it sends, sets its gauges after each message it handles, and keeps what it hands
to the recorder until the recorder has it.

**Hand-overs to the recorder are acknowledged.** A message in Thespian's transport to a process
that is killed is lost without a dead letter (the receiving side took it off the socket but
never handled it). So Record, RecordDeals and RecordPositions carry a number; the recorder
answers ``Recorded`` for many of them at once (one message per sender per ack window, after the
outbox append), and the sender keeps each one until then: a new recorder (a Peers broadcast)
gets every unacknowledged one again at once, and one older than a number the recorder did
acknowledge (a gap: it was lost on the way) goes again at once; so does one older than a number
the recorder parked (held back for the events before it, service/taken.py). Only one unanswered
for ``RESEND_AFTER_S``, and for twice as long as the recorder took to answer lately, goes again
without that evidence, as a last resort, and each such copy doubles the wait for the next: a
recorder that is merely behind must not be flooded with copies of what it is about to take
(resending after a few seconds turned a busy recorder into a storm of copies that it then fell
further behind on). The recorder drops events it already has by event_id. They are kept per
actor *process*, not per order: a released OrderActor that takes the next order still holds the
last order's unacknowledged events. Its ``Released`` carries a copy of them, which the
supervisor keeps for a minute: if that process dies meanwhile, the supervisor hands them over
itself. An order whose actor dies while it is active is revived from what was recorded and from
the broker.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from datetime import timedelta
from typing import Any, NamedTuple

import msgspec
from thespian.actors import ActorTypeDispatcher, WakeupMessage

from messages.actor import Configure, Peers, Ping, Pong, Recorded, Start
from service.config import Settings
from service.leases import tree_members
from service.logs import Log

log = Log(__name__)

# A hand-over neither acknowledged nor shown lost (by a gap) within this long goes again, as a
# last resort: the recorder acknowledges within its ack window, a busy one much later. Each such
# copy doubles the wait for the next (up to RESEND_PATIENCE_MAX_S), and none goes before
# ANSWER_TIME_FACTOR times as long as the recorder took to answer lately: one minutes behind is
# not sent a copy of everything on top of its backlog.
RESEND_AFTER_S = 60.0
RESEND_PATIENCE_MAX_S = 480.0
ANSWER_TIME_FACTOR = 2.0
# A copy sent again because of a gap gets this long to be acknowledged before the next copy.
LOST_AFTER_S = 1.0
HANDOVER = "resend unacknowledged hand-overs"


class HandOver(NamedTuple):
    """A hand-over to the recorder not acknowledged yet."""

    sent_at: float  # monotonic, of its last copy
    message: Any
    patience_s: float = RESEND_AFTER_S  # before the next copy without evidence of a loss
    parked: bool = False  # the recorder has it, waiting for its order's events before it
    copies: int = 0  # sent again so often


class RoleActor(ActorTypeDispatcher):
    settings: Settings
    peers: Peers
    def __init__(self) -> None:
        super().__init__()
        # Messages this actor sent, by type: what an order costs in inter-process messages.
        self.sent: Counter[str] = Counter()
        # Hand-overs to the recorder not acknowledged yet, by their number.
        self.handed_over: dict[int, HandOver] = {}
        self.last_ack = 0
        self.handover_timer = False
        # How long the recorder took lately to answer a hand-over sent once (copies say nothing:
        # which one was answered?): as far behind as that, it is slow, not losing them.
        self.answer_time_s = 0.0

    def send(self, target: Any, message: Any) -> None:
        self.sent[type(message).__name__] += 1
        super().send(target, message)

    def receiveMessage(self, message: Any, sender: Any) -> Any:
        if isinstance(message, Configure | Start) and not message.share.whole:
            tree_members(message.settings.run_dir, message.share).join()  # (a partition's tree)
        handled = super().receiveMessage(message, sender)
        self.set_gauges()
        return handled

    def set_gauges(self) -> None:
        """Set this role's gauges from its state (after every message: they cost none of their own)."""

    def receiveMsg_Peers(self, message: Peers, sender: Any) -> None:
        moved = message.recorder != self.peers.recorder if getattr(self, "peers", None) is not None else False
        self.peers = message
        if moved and self.handed_over:
            self.resend_all()  # a new recorder: whatever the old one did not acknowledge

    # --- hand-overs to the recorder -------------------------------------------------------

    def hand_over(self, message: Any) -> None:
        """Send a Record / RecordDeals / RecordPositions to the recorder and keep it until acknowledged."""
        self.last_ack += 1
        message = msgspec.structs.replace(message, ack=self.last_ack, reply_to=self.myAddress)
        self.handed_over[self.last_ack] = HandOver(time.monotonic(), message)
        self.send(self.peers.recorder, message)
        if not self.handover_timer:
            self.handover_timer = True
            self.wakeupAfter(timedelta(seconds=RESEND_AFTER_S), payload=HANDOVER)

    def receiveMsg_Recorded(self, message: Recorded, sender: Any) -> None:
        now = time.monotonic()
        answered = [kept for ack in (*message.acks, *message.parked) if (kept := self.handed_over.get(ack)) is not None and not kept.copies]
        if answered:
            self.answer_time_s = max(now - kept.sent_at for kept in answered)
        for ack in message.acks:
            self.handed_over.pop(ack, None)
        for ack in message.parked:
            if (kept := self.handed_over.get(ack)) is not None:
                self.handed_over[ack] = kept._replace(parked=True)
        # The recorder takes one sender's hand-overs in the order they were sent: one still
        # unacknowledged below a number it acknowledged (or parked) was lost on the way.
        highest = max([*message.acks, *message.parked], default=0)
        lost = [ack for ack, kept in self.handed_over.items() if ack < highest and not kept.parked and now - kept.sent_at >= LOST_AFTER_S]
        if lost:
            self._send_again(lost, "lost on the way (a later one was acknowledged)")

    def handover_wakeup(self, message: WakeupMessage) -> bool:
        """Whether this wakeup was the hand-over timer (handled here)."""
        if message.payload != HANDOVER:
            return False
        self.handover_timer = False
        now = time.monotonic()
        slow = ANSWER_TIME_FACTOR * self.answer_time_s
        overdue = [ack for ack, kept in self.handed_over.items() if now - kept.sent_at >= max(kept.patience_s, slow)]
        if overdue:
            self._send_again(overdue, "not acknowledged for a minute or more", back_off=True)
        if self.handed_over:
            self.handover_timer = True
            self.wakeupAfter(timedelta(seconds=RESEND_AFTER_S), payload=HANDOVER)
        return True

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        self.handover_wakeup(message)

    def resend_all(self) -> None:
        """Every unacknowledged hand-over, to a new recorder."""
        if self.handed_over:
            self._send_again(list(self.handed_over), "for a new recorder")

    def _send_again(self, acks: list[int], why: str, back_off: bool = False) -> None:
        now = time.monotonic()
        for ack in acks:
            kept = self.handed_over[ack]
            patience_s = min(RESEND_PATIENCE_MAX_S, kept.patience_s * 2) if back_off else kept.patience_s
            self.handed_over[ack] = HandOver(now, kept.message, patience_s, copies=kept.copies + 1)
            self.send(self.peers.recorder, kept.message)
        log.warning("%s: %d hand-overs sent to the recorder again: %s", type(self).__name__, len(acks), why)

    def receiveMsg_Ping(self, message: Ping, sender: Any) -> None:
        self.send(sender, Pong(type(self).__name__, os.getpid(), str(self.myAddress), self.doing(), dict(self.sent)))

    def doing(self) -> str:
        """A few words on what the actor holds, for ``execution-service ps``."""
        return ""
