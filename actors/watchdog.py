"""Watchdog: stops the actor system once its launcher is gone.

A launcher stopped any ordinary way drains and shuts the system down itself; one that is
SIGKILLed cannot, and the Thespian admin lives in a session of its own, so without this the
tree would live on headless, holding the admin port and the chdb lock. The watchdog drains
the service (held writes reach ClickHouse and the sinks) and then kills its own session.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Any

from thespian.actors import WakeupMessage

from actors.base import RoleActor
from messages.actor import Drain, Drained, Watch
from service.logs import Log
from service.processes import kill_session, started_at

log = Log(__name__)

CHECK_INTERVAL = timedelta(seconds=1)
DRAIN_TIMEOUT = timedelta(seconds=60)
GIVE_UP = "drain timed out"


class Watchdog(RoleActor):
    def __init__(self) -> None:
        super().__init__()
        self.watch: Watch | None = None

    def receiveMsg_Watch(self, message: Watch, sender: Any) -> None:
        self.watch = message
        self.wakeupAfter(CHECK_INTERVAL)

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        if self.watch is None:
            return
        if message.payload == GIVE_UP:
            log.error("the drain did not finish within %s: stopping anyway", DRAIN_TIMEOUT)
            self._stop()
        elif started_at(self.watch.launcher_pid) == self.watch.launcher_started:
            self.wakeupAfter(CHECK_INTERVAL)
        else:
            log.error("the launcher (pid %d) is gone: draining and stopping the service", self.watch.launcher_pid)
            self.send(self.watch.supervisor, Drain())
            self.wakeupAfter(DRAIN_TIMEOUT, payload=GIVE_UP)

    def receiveMsg_Drained(self, message: Drained, sender: Any) -> None:
        self._stop()

    def _stop(self) -> None:
        log.warning("stopping every process of the actor system (session %d)", os.getsid(0))
        kill_session(os.getsid(0))

    def doing(self) -> str:
        return f"watching the launcher, pid {self.watch.launcher_pid}" if self.watch else "idle"
