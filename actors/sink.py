"""The shape both outbound writers share: an ordered queue drained by one task that writes
in batches. A batch that fails transiently (the server is down) is retried with a capped
back-off until it goes through, so nothing is dropped and per-order order is kept; one the
server refuses for good is written item by item and the refused item is dead-lettered
(service/failures.py), so nothing behind it waits."""

from __future__ import annotations

import asyncio
from typing import Any

from actors.loop import LoopActor
from messages.actor import Configure, Delivered, Peers, Ready
from service.config import Settings
from service.failures import UNCLASSIFIED_ATTEMPTS, DeadLetters, Failure, classify
from service.logs import Log

log = Log(__name__)

MAX_BACKOFF_S = 5.0


class SinkActor(LoopActor):
    role = "sink"

    async def open(self) -> None:
        """Connect to the server (called on the loop, retried until it works)."""
        raise NotImplementedError

    async def write(self, batch: list[Any]) -> None:
        """Write one batch durably or raise."""
        raise NotImplementedError

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.settings: Settings = message.settings
        self.peers: Peers = message.peers
        if self.loop is None:
            self.start_loop()
            self.dead_letters = DeadLetters(self.settings.run_dir, self.role)
            self.queue: asyncio.Queue[Any] = asyncio.Queue()
            self.spawn(self._drain_forever())
            for early in getattr(self, "early", []):
                self.enqueue(*early)
            self.early: list[Any] = []
        self.send(sender, Ready(self.role))

    def enqueue(self, items: list[Any], batch_id: int | None = None, confirm_to: Any = None) -> None:
        """Queue items for writing; with a batch_id, ``confirm_to`` hears Delivered once they are written."""
        if self.loop is None:  # a Publish that came before Configure: written once configured
            if not hasattr(self, "early"):
                self.early = []
            self.early.append((items, batch_id, confirm_to))
            return
        self.loop.call_soon_threadsafe(self.queue.put_nowait, (items, batch_id, confirm_to))

    async def _drain_forever(self) -> None:
        while await self._attempt("connect", self.open, give_up=False) is not None:
            pass
        while True:
            taken = [await self.queue.get()]
            while sum(len(items) for items, _, _ in taken) < self.settings.batch_size and not self.queue.empty():
                taken.append(self.queue.get_nowait())
            batch = [item for items, _, _ in taken for item in items]
            if batch:
                await self._write(batch)
            for _, batch_id, confirm_to in taken:
                if batch_id is not None:
                    self.deliver(confirm_to, Delivered(self.role, batch_id))
                self.queue.task_done()

    async def _write(self, batch: list[Any]) -> None:
        refused = await self._attempt(f"write of {len(batch)}", lambda: self.write(batch))
        if refused is None:
            return
        if len(batch) > 1:
            log.warning("%s: the server refused a batch of %d (%s): writing it item by item", self.role, len(batch), refused)
        for item in batch:
            refused = await self._attempt("write of one", lambda item=item: self.write([item]))
            if refused is not None:
                self.dead_letters.add(item, refused)

    async def _attempt(self, what: str, attempt: Any, give_up: bool = True) -> BaseException | None:
        """None once ``attempt`` succeeds; the error once it fails for good (permanently, or
        unclassified UNCLASSIFIED_ATTEMPTS times). A transient failure is retried for as long
        as it lasts, every MAX_BACKOFF_S at most."""
        backoff, unclassified = 0.1, 0
        while True:
            try:
                await attempt()
                return None
            except Exception as exc:
                failure = classify(exc)
                unclassified += failure is Failure.UNCLASSIFIED
                if give_up and (failure is Failure.PERMANENT or unclassified >= UNCLASSIFIED_ATTEMPTS):
                    return exc
                log.warning("%s %s failed (%s, %s); retrying in %.1fs", self.role, what, failure.value, exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(MAX_BACKOFF_S, backoff * 2)
