"""Ingress: the durable consumer of ``signals.approved.>``; validates before anything else.

Whatever arrives ends, within seconds, as an order or as a dead letter with its reason, and
is acknowledged; nothing can hold up the messages behind it:
- a payload that does not decode (malformed, nested too deep, too large, a bad number or
  UTF-8) or does not pass the pre-trade checks (``model.pretrade``) is dead-lettered at once;
- a signal published on bare ``signals.approved`` is captured by a consumer of its own and
  dead-lettered (the symbol token is part of the contract);
- a signal whose symbol has no quote yet waits a few redeliveries for one, then is
  dead-lettered ``no_market_quote``;
- a failure nobody foresaw (here or in the supervisor) lets the signal come again a bounded
  number of times, then dead-letters it ``internal_error`` with the exception;
- JetStream's own limits back this up: ``max_deliver`` on the consumer, whose advisory the
  service turns into a ``max_deliveries`` dead letter, and a max message size on the stream.

A signal that comes again (a tree died before its order was recorded) is not judged before
the broker has said whether it has its order: if it has, the signal is taken as the broker's
order whatever the market checks would say now (the market has moved since it went out);
while the connector does not answer, it is let come again.

A valid signal is acknowledged only when its order is recorded in ClickHouse (SignalsDurable),
it is a known duplicate (SignalSettled) or the supervisor declined it (SignalDeclined); until
then its delivery is kept alive with in-progress acks, so a slow store does not redeliver it.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
import traceback
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from thespian.actors import PoisonMessage, WakeupMessage

from actors.loop import LoopActor
from messages import broker as wire
from messages.actor import (
    Backpressure,
    Configure,
    CrossCheck,
    CrossChecked,
    FailSignal,
    Peers,
    Ready,
    SignalDeclined,
    SignalsDurable,
    SignalSettled,
    SignalsReceived,
)
from messages.codec import ContractError, decode, encode
from messages.control import GetQuotes, Quotes, ServerCheck, SignalAlert
from messages.order import SIGNAL_ALERT_SUBJECT, Alert, DeadLetter, order_id_for
from messages.signal import SignalRefused, TradingSignal, fingerprint, parse_signal
from messages.symbols import SYMBOLS
from model.pretrade import check_content, check_market
from service import metrics
from service.config import Settings
from service.health import check_nats
from service.leases import Fence
from service.logs import Log
from service.partitions import published_subject
from service.streams import BARE_SIGNAL_SUBJECT, SIGNAL_SUBJECTS, connect_nats, ensure_streams

log = Log(__name__)
T = TypeVar("T")

# A delivery not acknowledged within this comes again (after ingress died); a live one is
# kept from timing out by in-progress acks every third of it.
ACK_WAIT_S = 10
# Deliveries an unforeseen failure, or a missing quote, may take before the dead letter.
INTERNAL_ERROR_DELIVERIES = 3
NO_QUOTE_DELIVERIES = 5
RETRY_DELAY_S = 1.0
# A quote older than this is asked for again before it is used.
QUOTE_REFRESH_S = 5.0
# How long the connector has to answer the ingress's questions (quotes, orders it has).
CONNECTOR_TIMEOUT_S = 1.0
# What of a refused payload travels in its dead letter, and of an exception's text.
EXCERPT_CHARS = 2048
DETAIL_CHARS = 1000
DEAD_LETTER_ATTEMPTS = 3
HEARTBEAT = "keep deliveries alive"


class Accepted(msgspec.Struct):
    """The valid signals of one fetch, with their deliveries, handed from the loop to the
    actor thread (never crosses processes)."""

    signals: list[tuple[TradingSignal, Any]]
    # signal_id -> the broker's report on its order, for signals that came again and are out.
    at_broker: dict[uuid.UUID, wire.BrokerOrderReport]


class Ingress(LoopActor):
    def __init__(self) -> None:
        super().__init__()
        # signal_id -> deliveries waiting for their acknowledgement
        self.unacked: dict[uuid.UUID, list[Any]] = {}
        # signal_id -> fingerprint of the signal in flight under it
        self.in_flight: dict[uuid.UUID, str] = {}
        self.checking: dict[uuid.UUID, TradingSignal] = {}
        # Set by the recorder's backpressure; read by the consumer loop.
        self.paused = threading.Event()
        # symbol -> (latest quote, when it arrived, monotonic); written on the loop only.
        self.quotes: dict[str, tuple[wire.BrokerQuote, float]] = {}
        # Fault injection (FailSignal): signal_id -> failures still to cause.
        self.failing: dict[uuid.UUID, int] = {}

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.settings: Settings = message.settings
        self.peers: Peers = message.peers
        self.share = message.share
        self.fence = Fence.of(self.settings.run_dir, self.share)
        if self.loop is None:
            self.start_loop()
            self.spawn(self._consume(sender))
            self.wakeupAfter(timedelta(seconds=ACK_WAIT_S / 3), payload=HEARTBEAT)
        else:
            self.send(sender, Ready("ingress"))

    # --- on the loop --------------------------------------------------------------------------

    async def _consume(self, configurer: Any) -> None:
        self.nc, self.js = await connect_nats(self.settings)
        await ensure_streams(self.js, self.settings)
        self.stream = f"{self.settings.stream_prefix}_SIGNALS"
        await self.nc.subscribe(f"{wire.TICK_SUBJECT}.>", cb=self._on_tick)
        await self._refresh_quotes(None)
        subscriptions = []
        for subject, durable in self._consumers():
            durable_name = f"{self.settings.stream_prefix}_{durable}"
            # A queue group: with several trees reading a shared consumer, one dead letter each.
            await self.nc.subscribe(
                f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.stream}.{durable_name}",
                queue="execution-ingress",
                cb=self._on_max_deliveries,
            )
            subscriptions.append(
                await self.js.pull_subscribe(
                    subject,
                    durable=durable_name,
                    stream=self.stream,
                    config=ConsumerConfig(
                        ack_policy=AckPolicy.EXPLICIT,
                        deliver_policy=DeliverPolicy.ALL,
                        ack_wait=ACK_WAIT_S,
                        max_deliver=self.settings.signal_max_deliver,
                        max_ack_pending=self.settings.signal_max_ack_pending,
                    ),
                )
            )
            if self.share.whole or subject == self.share.signal_subject:  # (a shared one is every tree's)
                self.spawn(metrics.watch_consumer(self.js, self.stream, durable_name))
        self.deliver(configurer, Ready("ingress"))
        await asyncio.gather(*(self._fetch_forever(subscription) for subscription in subscriptions))

    def _consumers(self) -> list[tuple[str, str]]:
        """(stored subject, durable) read here. Off-contract subjects (bare, or with more
        tokens) are not partitioned: every tree reads their shared consumers and refuses them."""
        shared = [(SIGNAL_SUBJECTS[0], "ingress"), (BARE_SIGNAL_SUBJECT, "ingress_bare")]
        return shared if self.share.whole else [(self.share.signal_subject, f"ingress{self.share.name}"), *shared]

    async def _fetch_forever(self, subscription: Any) -> None:
        while True:
            if not (batch := await self.fetch(subscription, "signal consumer", held=self.paused.is_set())):
                continue
            try:
                accepted = await self._screen(batch)
            except Exception as exc:  # a bug here must not stop intake: the batch comes again
                log.error("screening a batch of %d signals failed: %s", len(batch), exc, exc_info=exc)
                await asyncio.gather(*(msg.nak(delay=RETRY_DELAY_S) for msg in batch), return_exceptions=True)
                continue
            if accepted is not None:
                self.deliver(None, accepted)

    async def _screen(self, batch: list[Any]) -> Accepted | None:
        """The batch's executable signals (None: not one); every other message is settled here."""
        parsed: list[tuple[TradingSignal, Any]] = []
        for msg in batch:
            try:
                parsed.append((parse_signal(msg.data), msg))
            except (ContractError, SignalRefused) as refused:
                await self._dead_letter(msg, refused.reason, refused.detail, getattr(refused, "field", None))
            except Exception as exc:
                await self._failed(msg, None, exc)
        stale = {signal.symbol for signal, _ in parsed if signal.symbol in SYMBOLS and not self._fresh(signal.symbol)}
        if stale:
            await self._refresh_quotes(sorted(stale))
        at_broker = await self._at_broker([signal for signal, msg in parsed if msg.metadata.num_delivered > 1])
        out = at_broker or {}
        valid = []
        now, limits = datetime.now(UTC), self.settings.limits
        for signal, msg in parsed:
            quote = self.quotes.get(signal.symbol, (None, 0.0))[0]
            try:
                self._injected_failure(signal.signal_id)
                check_content(signal, _subject_symbol(published_subject(msg.subject)), SYMBOLS, limits)
                if signal.signal_id not in out:
                    if at_broker is None and msg.metadata.num_delivered > 1:
                        await msg.nak(delay=RETRY_DELAY_S)  # its order may be out: judged once the broker has said
                        continue
                    check_market(signal, quote, limits, now)
            except SignalRefused as refused:
                if refused.reason == "no_market_quote" and msg.metadata.num_delivered < NO_QUOTE_DELIVERIES:
                    await msg.nak(delay=RETRY_DELAY_S)  # the connector may not have published it yet
                else:
                    await self._dead_letter(msg, refused.reason, refused.detail, None, signal.signal_id)
                continue
            except Exception as exc:
                await self._failed(msg, signal.signal_id, exc)
                continue
            if not self.share.owns(signal.symbol):
                # Left from before the stream was partitioned: the tree serving its symbol takes it.
                await msg.nak(delay=RETRY_DELAY_S)
                continue
            if msg.metadata.num_delivered >= self.settings.signal_max_deliver:
                log.warning("signal %s: the last delivery JetStream will make (%d)", signal.signal_id, msg.metadata.num_delivered)
            valid.append((signal, msg))
        return Accepted(valid, {s.signal_id: out[s.signal_id] for s, _ in valid if s.signal_id in out}) if valid else None

    async def _at_broker(self, signals: list[TradingSignal]) -> dict[uuid.UUID, wire.BrokerOrderReport] | None:
        """signal_id -> the broker's report, for those of these signals (that came again) whose
        order the broker has; None if the connector did not answer."""
        if not signals:
            return {}
        signal_ids = {order_id_for(signal.signal_id): signal.signal_id for signal in signals}
        report = await self._ask_connector(wire.ORDER_STATUS_SUBJECT, wire.OrderStatusQuery(order_ids=list(signal_ids)), wire.OrderStatusReport)
        if report is None:
            return None
        return {
            signal_ids[order.order_id]: order
            for order in report.orders
            if order.order_id in signal_ids and order.state is not wire.BrokerOrderState.UNKNOWN
        }

    def _injected_failure(self, signal_id: uuid.UUID) -> None:
        if self.failing.get(signal_id, 0) > 0:
            self.failing[signal_id] -= 1
            raise RuntimeError(f"injected failure for signal {signal_id}")

    async def _failed(self, msg: Any, signal_id: uuid.UUID | None, exc: BaseException) -> None:
        """An unforeseen failure: the message comes again, a bounded number of times."""
        if msg.metadata.num_delivered < INTERNAL_ERROR_DELIVERIES:
            log.error("signal on %s failed (delivery %d), retrying: %r", msg.subject, msg.metadata.num_delivered, exc)
            await msg.nak(delay=RETRY_DELAY_S)
            return
        detail = "".join(traceback.format_exception_only(exc)).strip()
        await self._dead_letter(msg, "internal_error", detail, None, signal_id)

    async def _dead_letter(
        self, msg: Any, reason: str, detail: str, field: str | None, signal_id: uuid.UUID | None = None
    ) -> None:
        """Refuse a delivery: the dead letter goes out, then the delivery is acknowledged."""
        seq, deliveries = msg.metadata.sequence.stream, msg.metadata.num_delivered
        if await self._publish_dead_letter(published_subject(msg.subject), msg.data, seq, deliveries, reason, detail, field, signal_id):
            await msg.ack()
        else:  # NATS is away: the signal comes again and is refused again
            await msg.nak(delay=RETRY_DELAY_S)

    async def _publish_dead_letter(
        self,
        subject: str,
        data: bytes,
        seq: int,
        deliveries: int,
        reason: str,
        detail: str,
        field: str | None,
        signal_id: uuid.UUID | None,
    ) -> bool:
        log.warning(
            "signal %s refused on %s (stream seq %d): %s: %s", signal_id or "(unreadable)", subject, seq, reason, detail[:DETAIL_CHARS]
        )
        letter = DeadLetter(
            subject=subject,
            reason=reason,
            detail=detail[:DETAIL_CHARS],
            field=field,
            # Cut before decoding: a huge payload is not decoded whole for an excerpt.
            payload=data[: EXCERPT_CHARS * 4].decode(errors="replace")[:EXCERPT_CHARS],
            payload_size=len(data),
            payload_sha256=hashlib.sha256(data).hexdigest(),
            payload_truncated=len(data) > EXCERPT_CHARS,
            stream=self.stream,
            stream_seq=seq,
            deliveries=deliveries,
            signal_id=str(signal_id) if signal_id else None,
            received_at=datetime.now(UTC),
        )
        published = await self._publish(self.settings.dead_letter_subject, encode(letter))
        if published:
            metrics.dead_lettered(reason)
        return published

    async def _publish(self, subject: str, payload: bytes) -> bool:
        for attempt in range(DEAD_LETTER_ATTEMPTS):
            try:
                await self.js.publish(subject, payload)
                return True
            except Exception as exc:
                log.warning("publish on %s failed (attempt %d): %s", subject, attempt + 1, exc)
                await asyncio.sleep(0.2 * (attempt + 1))
        return False

    async def _on_max_deliveries(self, advisory: Any) -> None:
        """JetStream gave up on a message: it becomes a dead letter, not a silent loss."""
        try:
            seq = int(msgspec.json.decode(advisory.data)["stream_seq"])
            stored = await self.js.get_msg(self.stream, seq)
        except Exception as exc:
            log.error("max-deliveries advisory could not be followed: %s", exc)
            return
        most = self.settings.signal_max_deliver
        detail = f"JetStream delivered it {most} times without an acknowledgement"
        # No delivery to acknowledge: the consumer no longer offers the message.
        subject = published_subject(stored.subject)
        await self._publish_dead_letter(subject, stored.data or b"", seq, most, "max_deliveries", detail, None, None)

    async def _on_tick(self, msg: Any) -> None:
        try:
            quote = decode(msg.data, wire.BrokerQuote)
        except ContractError as exc:
            log.warning("unreadable quote on %s: %s", msg.subject, exc)
            return
        self.quotes[quote.symbol] = (quote, time.monotonic())

    def _fresh(self, symbol: str) -> bool:
        return time.monotonic() - self.quotes.get(symbol, (None, 0.0))[1] < QUOTE_REFRESH_S

    async def _refresh_quotes(self, symbols: list[str] | None) -> None:
        """Ask the connector for the latest quotes (at start, and for quotes grown old)."""
        report = await self._ask_connector(wire.QUOTES_SUBJECT, wire.QuotesQuery(symbols=symbols), wire.QuotesReport)
        if report is None:
            return
        now = time.monotonic()
        for quote in report.quotes:
            self.quotes[quote.symbol] = (quote, now)

    async def _ask_connector(self, subject: str, query: msgspec.Struct, kind: type[T]) -> T | None:
        """The connector's answer; None (logged) when there is none in time, or none readable."""
        try:
            reply = await self.nc.request(subject, encode(query), timeout=CONNECTOR_TIMEOUT_S)
            return decode(reply.data, kind)
        except Exception as exc:
            log.warning("connector did not answer %s: %s", subject, exc)
            return None

    async def check_servers(self) -> list[ServerCheck]:
        return [await check_nats(getattr(self, "nc", None), self.settings)]  # (nc: once connected)

    # --- on the actor thread ------------------------------------------------------------------

    def receiveMsg_GetQuotes(self, message: GetQuotes, sender: Any) -> None:
        """The supervisor's market orders of its own (a flatten) are priced as signals are checked."""

        async def answer() -> None:
            if stale := [symbol for symbol in message.symbols if not self._fresh(symbol)]:
                await self._refresh_quotes(stale)
            known = [self.quotes[symbol][0] for symbol in message.symbols if symbol in self.quotes]
            self.deliver(sender, Quotes({quote.symbol: (quote.bid, quote.ask) for quote in known}))

        self.spawn(answer())

    def receiveMsg_SignalAlert(self, message: SignalAlert, sender: Any) -> None:
        signal_id = str(message.signal_id) if message.signal_id else None
        alert = Alert(kind=message.kind, signal_id=signal_id, detail=message.detail, at=datetime.now(UTC))
        log.warning("alert: %s: %s", alert.kind, alert.detail)
        self.spawn(self._publish(SIGNAL_ALERT_SUBJECT, encode(alert)))

    def receiveMsg_Accepted(self, message: Accepted, sender: Any) -> None:
        fresh: list[TradingSignal] = []
        for signal, msg in message.signals:
            digest = fingerprint(signal)
            known = self.in_flight.setdefault(signal.signal_id, digest)
            if known != digest:
                # Other content under the id of a signal still on its way: not one to join it.
                detail = f"signal_id {signal.signal_id} is already being executed with other content; this one is not"
                self._decline(SignalDeclined(signal.signal_id, "duplicate_conflict", detail), [msg])
                continue
            waiting = self.unacked.get(signal.signal_id)
            self.unacked.setdefault(signal.signal_id, []).append(msg)
            if not waiting:  # else a redelivery of a signal on its way: acknowledged with the first
                fresh.append(signal)
        # Out at the broker already: no second look at trading_signals, it was looked at then.
        if at_broker := [signal for signal in fresh if signal.signal_id in message.at_broker]:
            self.send(self.peers.supervisor, SignalsReceived(at_broker, {s.signal_id: message.at_broker[s.signal_id] for s in at_broker}))
            fresh = [signal for signal in fresh if signal.signal_id not in message.at_broker]
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
                detail = f"signal {signal.signal_id} is not an approved row of trading_signals"
                self._decline(SignalDeclined(signal.signal_id, "not_in_trading_signals", detail))

    def receiveMsg_SignalDeclined(self, message: SignalDeclined, sender: Any) -> None:
        self._decline(message)

    def _decline(self, declined: SignalDeclined, deliveries: list[Any] | None = None) -> None:
        """Settle the deliveries of a declined signal (all of them, unless named)."""
        if deliveries is None:
            deliveries = self._settled(declined.signal_id)

        async def settle() -> None:
            for msg in deliveries:
                if declined.reason == "internal_error":
                    await self._failed(msg, declined.signal_id, RuntimeError(declined.detail))
                else:
                    await self._dead_letter(msg, declined.reason, declined.detail, None, declined.signal_id)
            if declined.reason == "duplicate_conflict":
                alert = Alert(kind=declined.reason, signal_id=str(declined.signal_id), detail=declined.detail, at=datetime.now(UTC))
                log.warning("alert: %s: %s", alert.kind, alert.detail)
                await self._publish(SIGNAL_ALERT_SUBJECT, encode(alert))

        self.spawn(settle())

    def receiveMsg_PoisonMessage(self, message: PoisonMessage, sender: Any) -> None:
        """The supervisor failed on a batch as a whole: each signal comes again, boundedly."""
        if isinstance(message.poisonMessage, SignalsReceived):
            for signal in message.poisonMessage.signals:
                self._decline(SignalDeclined(signal.signal_id, "internal_error", f"the supervisor failed: {message.details}"))

    def receiveMsg_FailSignal(self, message: FailSignal, sender: Any) -> None:
        log.warning("fault injection: the next %d deliveries of signal %s fail", message.times, message.signal_id)
        self.failing[message.signal_id] = message.times

    def receiveMsg_Backpressure(self, message: Backpressure, sender: Any) -> None:
        if message.on:
            self.paused.set()
            log.warning("not taking signals: %s", message.reason)
        else:
            self.paused.clear()
            log.warning("taking signals again: %s", message.reason)

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        if message.payload != HEARTBEAT:
            return
        deliveries = [msg for waiting in self.unacked.values() for msg in waiting]

        async def keep_alive() -> None:
            await asyncio.gather(*(msg.in_progress() for msg in deliveries), return_exceptions=True)

        if deliveries:
            self.spawn(keep_alive())
        self.wakeupAfter(timedelta(seconds=ACK_WAIT_S / 3), payload=HEARTBEAT)

    def doing(self) -> str:
        return f"{'paused' if self.paused.is_set() else 'consuming'}, {len(self.unacked)} signals awaiting their record"

    def _settled(self, signal_id: uuid.UUID) -> list[Any]:
        self.in_flight.pop(signal_id, None)
        return self.unacked.pop(signal_id, [])

    def receiveMsg_SignalsDurable(self, message: SignalsDurable, sender: Any) -> None:
        self._ack(message.signal_ids)

    def receiveMsg_SignalSettled(self, message: SignalSettled, sender: Any) -> None:
        self._ack([message.signal_id])

    def _ack(self, signal_ids: list[uuid.UUID]) -> None:
        deliveries = [msg for signal_id in signal_ids for msg in self._settled(signal_id)]

        async def ack_all() -> None:
            for msg in deliveries:
                await msg.ack()

        if deliveries:
            self.spawn(ack_all())


def _subject_symbol(subject: str) -> str | None:
    """``signals.approved.EURUSD`` -> EURUSD; the bare subject has none."""
    return None if subject == BARE_SIGNAL_SUBJECT else subject.split(".", 2)[2]
