"""What every role shares: it learns where restarted peers live, tells its process id, counts
the messages it sends, sets its gauges after each message it handles, and keeps what it hands
to the recorder until the recorder has it.

**Hand-overs to the recorder are acknowledged.** A message in Thespian's transport to a
process that is killed is lost without a dead letter (the receiving side took it off the
socket but never handled it). So Record, RecordDeals and RecordPositions carry a number; the
recorder answers ``Recorded`` for many of them at once (one message per sender per ack window,
after the outbox append), and the sender keeps each one until then: a new recorder (a Peers
broadcast) gets every unacknowledged one again at once, and one unanswered for
``RESEND_AFTER_S`` goes again to the recorder it knows. The recorder drops events it already
has by event_id. They are kept per actor *process*, not per order: a released OrderActor that
takes the next order still holds the last order's unacknowledged events, and no message is
added to hand them elsewhere (the supervisor would be one more hop per order and a bottleneck).
If the process itself dies, its order is revived from what was recorded and from the broker.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from datetime import timedelta
from typing import Any

import msgspec
from thespian.actors import ActorTypeDispatcher, WakeupMessage

from messages.actor import Peers, Ping, Pong, Recorded
from service.config import Settings
from service.logs import Log

log = Log(__name__)

# A hand-over the recorder has not acknowledged within this long goes again (the recorder
# acknowledges within its ack window; a busy one may take longer: it drops what it has).
RESEND_AFTER_S = 5.0
HANDOVER = "resend unacknowledged hand-overs"


class RoleActor(ActorTypeDispatcher):
    settings: Settings
    peers: Peers
    def __init__(self) -> None:
        super().__init__()
        # Messages this actor sent, by type: what an order costs in inter-process messages.
        self.sent: Counter[str] = Counter()
        # Hand-overs to the recorder not acknowledged yet: ack -> (when sent, the message).
        self.handed_over: dict[int, tuple[float, Any]] = {}
        self.last_ack = 0
        self.handover_timer = False

    def send(self, target: Any, message: Any) -> None:
        self.sent[type(message).__name__] += 1
        super().send(target, message)

    def receiveMessage(self, message: Any, sender: Any) -> Any:
        handled = super().receiveMessage(message, sender)
        self.set_gauges()
        return handled

    def set_gauges(self) -> None:
        """Set this role's gauges from its state (after every message: they cost none of their own)."""

    def receiveMsg_Peers(self, message: Peers, sender: Any) -> None:
        moved = message.recorder != self.peers.recorder if getattr(self, "peers", None) is not None else False
        self.peers = message
        if moved and self.handed_over:
            self._resend(0.0)  # a new recorder: whatever the old one did not acknowledge

    # --- hand-overs to the recorder -------------------------------------------------------

    def hand_over(self, message: Any) -> None:
        """Send a Record / RecordDeals / RecordPositions to the recorder and keep it until acknowledged."""
        self.last_ack += 1
        message = msgspec.structs.replace(message, ack=self.last_ack, reply_to=self.myAddress)
        self.handed_over[self.last_ack] = (time.monotonic(), message)
        self.send(self.peers.recorder, message)
        if not self.handover_timer:
            self.handover_timer = True
            self.wakeupAfter(timedelta(seconds=RESEND_AFTER_S), payload=HANDOVER)

    def receiveMsg_Recorded(self, message: Recorded, sender: Any) -> None:
        for ack in message.acks:
            self.handed_over.pop(ack, None)

    def handover_wakeup(self, message: WakeupMessage) -> bool:
        """Whether this wakeup was the hand-over timer (handled here)."""
        if message.payload != HANDOVER:
            return False
        self.handover_timer = False
        self._resend(RESEND_AFTER_S)
        if self.handed_over:
            self.handover_timer = True
            self.wakeupAfter(timedelta(seconds=RESEND_AFTER_S), payload=HANDOVER)
        return True

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        self.handover_wakeup(message)

    def _resend(self, older_than_s: float) -> None:
        now = time.monotonic()
        due = [ack for ack, (at, _) in self.handed_over.items() if now - at >= older_than_s]
        for ack in due:
            message = self.handed_over[ack][1]
            self.handed_over[ack] = (now, message)
            self.send(self.peers.recorder, message)
        if due:
            log.warning("%s: %d hand-overs the recorder did not acknowledge sent again", type(self).__name__, len(due))

    def receiveMsg_Ping(self, message: Ping, sender: Any) -> None:
        self.send(sender, Pong(type(self).__name__, os.getpid(), str(self.myAddress), self.doing(), dict(self.sent)))

    def doing(self) -> str:
        """A few words on what the actor holds, for ``execution-service ps``."""
        return ""
