"""What every role shares: it learns where restarted peers live, and tells its process id."""

from __future__ import annotations

import os
from typing import Any

from thespian.actors import ActorTypeDispatcher

from messages.actor import Peers, Ping, Pong
from service.config import Settings


class RoleActor(ActorTypeDispatcher):
    settings: Settings
    peers: Peers

    def receiveMsg_Peers(self, message: Peers, sender: Any) -> None:
        self.peers = message

    def receiveMsg_Ping(self, message: Ping, sender: Any) -> None:
        self.send(sender, Pong(type(self).__name__, os.getpid(), str(self.myAddress), self.doing()))

    def doing(self) -> str:
        """A few words on what the actor holds, for ``execution-service ps``."""
        return ""
