"""The bridge between a Thespian actor (synchronous) and asyncio clients (nats-py, aiokafka).

An I/O actor owns a private event loop running in a thread of its own process. The actor
hands coroutines to the loop; the loop hands messages back through a queue and wakes the
actor through a pipe that Thespian watches (ThespianWatch). Only the actor thread calls
``self.send``, as Thespian requires. Chosen over a loop in a separate process because it
costs no extra process and no extra inter-process hop per message.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import queue
import sys
import threading
from collections.abc import Coroutine
from typing import Any

from thespian.actors import ThespianWatch, WatchMessage

from actors.base import RoleActor
from service.leases import Fence
from messages.control import CheckServers, ServerCheck, ServersChecked
from service.logs import Log

log = Log(__name__)

SWITCH_INTERVAL_S = 0.0005


class LoopActor(RoleActor):
    """Base for actors that do asyncio I/O. Call ``start_loop`` once, when configured."""

    loop: asyncio.AbstractEventLoop | None = None
    # Whether this tree's lease lets it read its partition's consumers (set when configured).
    fence = Fence(None)
    fenced = False

    def start_loop(self) -> None:
        # Two threads share the GIL here; the default 5 ms switch interval would make every
        # hand-over between the actor thread and the loop wait that long under load.
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._outbox: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, name=f"{type(self).__name__}-loop", daemon=True).start()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> concurrent.futures.Future[Any]:
        """Run ``coro`` on the loop (from the actor thread)."""
        if self.loop is None:
            raise RuntimeError(f"{type(self).__name__}: spawn before start_loop")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        future.add_done_callback(self._log_failure)
        return future

    def receiveMsg_CheckServers(self, message: CheckServers, sender: Any) -> None:
        async def check() -> None:
            self.deliver(sender, ServersChecked(type(self).__name__, await self.check_servers()))

        self.spawn(check())

    async def check_servers(self) -> list[ServerCheck]:
        """The servers this actor talks to, checked now over its own connections (on the loop)."""
        return []

    async def fetch(self, subscription: Any, what: str, held: bool = False) -> list[Any]:
        """The next batch of a JetStream pull consumer (on the loop); [] while ``held`` or
        past the lease, on a timeout, or when the fetch failed (the client reconnects). A
        batch that arrives as the lease runs out is handed back for the next owner."""
        fenced = not self.fence.valid()
        if fenced != self.fenced:
            self.fenced = fenced
            log.warning("%s: %s", what, "reading stops: the lease is not known to be valid" if fenced else "reading again")
        if held or fenced:
            await asyncio.sleep(0.1)  # the messages wait in JetStream meanwhile
            return []
        try:
            batch: list[Any] = await subscription.fetch(256, timeout=1.0)
        except asyncio.TimeoutError:
            return []
        except Exception as exc:  # a NATS restart: the client reconnects, we keep fetching
            log.warning("%s fetch failed: %s", what, exc)
            await asyncio.sleep(0.2)
            return []
        if not self.fence.valid():
            await asyncio.gather(*(msg.nak() for msg in batch), return_exceptions=True)
            return []
        return batch

    def deliver(self, target: Any, message: Any) -> None:
        """Send ``message`` to ``target`` from the loop thread (through the actor thread).
        A ``target`` of None hands the message to this actor itself."""
        self._outbox.put((target, message))
        os.write(self._wake_w, b"\0")

    def receiveMessage(self, message: Any, sender: Any) -> Any:
        if isinstance(message, WatchMessage):
            self._drain_outbox()
        else:
            super().receiveMessage(message, sender)
        return ThespianWatch([self._wake_r]) if self.loop is not None else None

    def _drain_outbox(self) -> None:
        try:
            os.read(self._wake_r, 65536)
        except BlockingIOError:
            pass
        while True:
            try:
                target, message = self._outbox.get_nowait()
            except queue.Empty:
                return
            if target is None:
                super().receiveMessage(message, self.myAddress)
            else:
                self.send(target, message)

    @staticmethod
    def _log_failure(future: concurrent.futures.Future[Any]) -> None:
        if not future.cancelled() and future.exception() is not None:
            log.error("loop task failed", exc_info=future.exception())
