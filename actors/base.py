"""What every role shares: it learns where restarted peers live, tells its process id, counts
the messages it sends, and sets its gauges after each message it handles."""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

from thespian.actors import ActorTypeDispatcher

from messages.actor import Peers, Ping, Pong
from service.config import Settings


class RoleActor(ActorTypeDispatcher):
    settings: Settings
    peers: Peers
    def __init__(self) -> None:
        super().__init__()
        # Messages this actor sent, by type: what an order costs in inter-process messages.
        self.sent: Counter[str] = Counter()

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
        self.peers = message

    def receiveMsg_Ping(self, message: Ping, sender: Any) -> None:
        self.send(sender, Pong(type(self).__name__, os.getpid(), str(self.myAddress), self.doing(), dict(self.sent)))

    def doing(self) -> str:
        """A few words on what the actor holds, for ``execution-service ps``."""
        return ""
