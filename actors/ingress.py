"""Ingress: the durable consumer of ``signals.approved.>``; validates before anything else.

Invalid input (malformed JSON, wrong types, not approved, hold, unknown symbol, bad volume,
a payload symbol that disagrees with the subject) is dead-lettered with its reason, logged,
and acknowledged so it is not redelivered forever. A valid signal is acknowledged only when
its order is recorded in ClickHouse (SignalsDurable) or it is a known duplicate
(SignalSettled); if the service dies before that, JetStream delivers it again.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from actors.loop import LoopActor
from messages.actor import (
    Backpressure,
    Configure,
    CrossCheck,
    CrossChecked,
    Peers,
    Ready,
    SignalsDurable,
    SignalSettled,
    SignalsReceived,
)
from messages.codec import ContractError, decode, encode
from messages.order import DeadLetter
from messages.signal import SignalRefused, TradingSignal, check_executable
from messages.symbols import SYMBOLS
from service.config import Settings
from service.logs import Log
from service.streams import connect_nats, ensure_streams

log = Log(__name__)

# A delivery not acknowledged within this comes again (e.g. after ingress was killed).
ACK_WAIT_S = 10


class Accepted(msgspec.Struct):
    """The valid signals of one fetch, with their deliveries, handed from the loop to the
    actor thread (never crosses processes)."""

    signals: list[tuple[TradingSignal, Any]]


class Ingress(LoopActor):
    def __init__(self) -> None:
        super().__init__()
        # signal_id -> deliveries waiting for their acknowledgement
        self.unacked: dict[uuid.UUID, list[Any]] = {}
        self.checking: dict[uuid.UUID, TradingSignal] = {}
        # Set by the recorder's backpressure; read by the consumer loop.
        self.paused = threading.Event()

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.settings: Settings = message.settings
        self.peers: Peers = message.peers
        if self.loop is None:
            self.start_loop()
            self.spawn(self._consume(sender))
        else:
            self.send(sender, Ready("ingress"))

    async def _consume(self, configurer: Any) -> None:
        self.nc, self.js = await connect_nats(self.settings)
        await ensure_streams(self.js, self.settings)
        subscription = await self.js.pull_subscribe(
            "signals.approved.>",
            durable=f"{self.settings.stream_prefix}_ingress",
            stream=f"{self.settings.stream_prefix}_SIGNALS",
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL, ack_wait=ACK_WAIT_S, max_ack_pending=20_000
            ),
        )
        self.deliver(configurer, Ready("ingress"))
        while True:
            if self.paused.is_set():
                await asyncio.sleep(0.1)  # signals wait in JetStream meanwhile
                continue
            try:
                batch = await subscription.fetch(256, timeout=1.0)
            except asyncio.TimeoutError:
                continue
            except Exception as exc:  # a NATS restart: the client reconnects, we keep fetching
                log.warning("signal consumer fetch failed: %s", exc)
                await asyncio.sleep(0.2)
                continue
            valid = [(signal, msg) for msg in batch if (signal := await self._validate(msg)) is not None]
            if valid:
                self.deliver(None, Accepted(valid))

    async def _validate(self, msg: Any) -> TradingSignal | None:
        """The signal, or None after dead-lettering it with the reason."""
        subject_symbol = msg.subject.split(".", 2)[2] if msg.subject.count(".") >= 2 else None
        try:
            signal = decode(msg.data, TradingSignal)
            check_executable(signal, subject_symbol, SYMBOLS)
        except (ContractError, SignalRefused) as refused:
            await self._dead_letter(msg, refused.reason, refused.detail, getattr(refused, "field", None))
            return None
        return signal

    async def _dead_letter(self, msg: Any, reason: str, detail: str, field: str | None) -> None:
        log.warning("signal refused on %s: %s: %s", msg.subject, reason, detail)
        letter = DeadLetter(
            subject=msg.subject,
            reason=reason,
            detail=detail,
            field=field,
            payload=msg.data.decode(errors="replace"),
            received_at=datetime.now(UTC),
        )
        await self.js.publish(self.settings.dead_letter_subject, encode(letter))
        await msg.ack()

    # --- on the actor thread ------------------------------------------------------------------

    def receiveMsg_Accepted(self, message: Accepted, sender: Any) -> None:
        fresh = []
        for signal, msg in message.signals:
            waiting = self.unacked.get(signal.signal_id)
            self.unacked.setdefault(signal.signal_id, []).append(msg)
            if not waiting:  # else a redelivery of a signal on its way: acknowledged with the first
                fresh.append(signal)
        if not fresh:
            return
        if self.settings.cross_check_trading_signals:
            self.checking.update({signal.signal_id: signal for signal in fresh})
            self.send(self.peers.recorder, CrossCheck([signal.signal_id for signal in fresh]))
        else:
            self.send(self.peers.supervisor, SignalsReceived(fresh))

    def receiveMsg_CrossChecked(self, message: CrossChecked, sender: Any) -> None:
        found = set(message.found)
        checked = [self.checking.pop(signal_id) for signal_id in message.asked]
        if confirmed := [signal for signal in checked if signal.signal_id in found]:
            self.send(self.peers.supervisor, SignalsReceived(confirmed))
        for signal in checked:
            if signal.signal_id not in found:
                for msg in self.unacked.pop(signal.signal_id, []):
                    detail = f"signal {signal.signal_id} is not an approved row of trading_signals"
                    self.spawn(self._dead_letter(msg, "not_in_trading_signals", detail, None))

    def receiveMsg_Backpressure(self, message: Backpressure, sender: Any) -> None:
        if message.on:
            self.paused.set()
            log.warning("not taking signals: %s", message.reason)
        else:
            self.paused.clear()
            log.warning("taking signals again: %s", message.reason)

    def doing(self) -> str:
        return f"{'paused' if self.paused.is_set() else 'consuming'}, {len(self.unacked)} signals awaiting their record"

    def receiveMsg_SignalsDurable(self, message: SignalsDurable, sender: Any) -> None:
        self._ack(message.signal_ids)

    def receiveMsg_SignalSettled(self, message: SignalSettled, sender: Any) -> None:
        self._ack([message.signal_id])

    def _ack(self, signal_ids: list[uuid.UUID]) -> None:
        deliveries = [msg for signal_id in signal_ids for msg in self.unacked.pop(signal_id, [])]

        async def ack_all() -> None:
            for msg in deliveries:
                await msg.ack()

        if deliveries:
            self.spawn(ack_all())
