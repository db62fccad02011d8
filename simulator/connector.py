"""The NATS side of the paper broker: the same contract as the real mt5-connector.

- consumes ``orders.submitted.>`` through a durable push consumer with explicit acks; an
  order is acked only after the broker events it caused are stored by JetStream;
- publishes ``broker.{fill,error,placed,cancelled}.{symbol}`` with JetStream (Nats-Msg-Id
  per event, so its own republish is deduplicated);
- answers ``mt5.cancel``, ``mt5.modify``, ``mt5.order_status``, ``mt5.positions``,
  ``mt5.deals`` and its own ``sim.control``;
- moves the market on a timer (random walk or CSV replay) and runs expiries.

One asyncio task touches the book at a time (callbacks and loops never await in the middle
of a book call), so the book needs no locks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import msgspec
import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import BadRequestError, NotFoundError

from messages.broker import (
    CANCEL_SUBJECT,
    DEALS_SUBJECT,
    MODIFY_SUBJECT,
    ORDER_STATUS_SUBJECT,
    POSITIONS_SUBJECT,
    QUOTES_SUBJECT,
    TICK_SUBJECT,
    BrokerCancelled,
    BrokerError,
    BrokerFill,
    BrokerPlaced,
    BrokerQuote,
    CancelCause,
    CancelRequest,
    DealsQuery,
    DealsReport,
    ModifyRequest,
    OrderRequest,
    OrderStatusQuery,
    OrderStatusReport,
    PositionsQuery,
    PositionsReport,
    QuotesQuery,
    QuotesReport,
    RequestResult,
)
from messages.codec import ContractError, decode, encode
from messages.enums import DealReason, Retcode
from messages.symbols import SYMBOLS
from simulator.book import Book, BrokerConfig, Event
from simulator.config import SimConfig
from simulator.control import SimControl, SimStatus
from simulator.faults import Envelope, FaultInjector, Wire
from simulator.market import Clock, Market, Session, Tick, read_ticks
from simulator.state import SimState, load_state, save_state

log = logging.getLogger("simulator")

ORDERS_FILTER = "orders.submitted.>"
# Answers to requests that carry no readable order_id.
NIL = uuid.UUID(int=0)
# Orders acked together after their events are stored; bounds the work redone after a crash.
ACK_BATCH = 256
# Orders delivered but not yet acked; enough to keep the consumer busy under load.
MAX_ACK_PENDING = 4096
PUBLISH_TIMEOUT_S = 5.0
HOUSEKEEPING_S = 0.05


# A symbol that can stand as a subject token; anything else is published under INVALID_TOKEN.
SUBJECT_TOKEN = re.compile(r"[A-Za-z0-9_-]+")
INVALID_TOKEN = "_invalid"


def salvage(data: bytes) -> tuple[uuid.UUID | None, str]:
    """The order_id and symbol of a request that breaks the contract, as far as they can be read."""
    try:
        body = msgspec.json.decode(data)
    except msgspec.DecodeError:
        return None, ""
    if not isinstance(body, dict) or not isinstance(body.get("order_id"), str):
        return None, ""
    try:
        order_id = uuid.UUID(body["order_id"])
    except ValueError:
        return None, ""
    symbol = body.get("symbol")
    return order_id, symbol if isinstance(symbol, str) else ""


# What a request the simulator could not answer gets back: the reply type its asker decodes.
Refusal = Callable[[uuid.UUID | None, int, str], msgspec.Struct]


def _result(order_id: uuid.UUID | None, retcode: int, comment: str) -> RequestResult:
    return RequestResult(order_id=order_id or NIL, retcode=retcode, comment=comment)


def _no_orders(order_id: uuid.UUID | None, retcode: int, comment: str) -> OrderStatusReport:
    return OrderStatusReport(orders=[])


def _no_positions(order_id: uuid.UUID | None, retcode: int, comment: str) -> PositionsReport:
    return PositionsReport(positions=[])


def _no_quotes(order_id: uuid.UUID | None, retcode: int, comment: str) -> QuotesReport:
    return QuotesReport(quotes=[])


def _no_deals(order_id: uuid.UUID | None, retcode: int, comment: str) -> DealsReport:
    return DealsReport(deals=[])


class Connector:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        state = load_state(config.state_file) if config.state_file else None
        self.clock = Clock(state.clock_offset_s if state else 0.0)
        self.market = Market(SYMBOLS, random.Random(f"{config.seed}:market"), depth_step_points=config.depth_step_points)
        if state is not None:
            self.market.restore(state.quotes)
        broker = BrokerConfig(
            balance=config.balance,
            leverage=config.leverage,
            commission_per_lot=config.commission_per_lot,
            day_length_s=config.day_length_s,
            ticket_base=config.ticket_base or int(time.time() * 1000) * 1000,
        )
        self.book = Book(self.market, broker, session=Session.parse(config.session), state=state.book if state else None)
        self.faults = FaultInjector(config.faults, config.seed)
        self.wire = Wire(self.faults)
        self._nc: nats.NATS | None = None
        self._js: JetStreamContext | None = None
        self._orders_sub: JetStreamContext.PushSubscription | None = None
        self._online = False
        # Published, JetStream ack awaited before the orders behind them are acked; keyed by a
        # sequence number so concurrent flushes settle each entry once.
        self._inflight: dict[int, tuple[Envelope, asyncio.Future]] = {}
        self._sent = itertools.count()
        # Not published yet (offline, or the publish failed): sent when possible, in order.
        self._backlog: list[Envelope] = []
        self._unacked: list[Msg] = []
        self._delayed: set[asyncio.Task] = set()
        self._loops: list[asyncio.Task] = []
        self._dirty = False
        self._saved_at = 0.0

    # --- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self._connect()
        self._loops.append(asyncio.create_task(self._housekeeping()))
        if self.config.ticks_csv:
            # Read now, so a bad file stops the start instead of a background task.
            ticks = read_ticks(self.config.ticks_csv, self.market.specs)
            self._loops.append(asyncio.create_task(self._replay(ticks)))
        elif self.config.tick_ms > 0:
            self._loops.append(asyncio.create_task(self._random_walk()))
        log.info("simulated mt5-connector up on %s (seed %s, prefix %s)", self.config.nats_server, self.config.seed, self.config.stream_prefix)

    async def stop(self) -> None:
        # Cancelled until done: on Python 3.11 asyncio.wait_for (under nats-py's requests) can
        # swallow a cancellation that comes just as its answer does, and the loop goes on.
        while pending := [task for task in self._loops if not task.done()]:
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.1)
        if self._delayed:
            await asyncio.wait(self._delayed, timeout=PUBLISH_TIMEOUT_S)
        await self._go_offline()
        self.save_state()
        log.info("simulated mt5-connector stopped")

    async def _connect(self) -> None:
        """Connect and set everything up, retrying until it works: the simulator may start
        before NATS, and a reconnect may find its consumer still bound for a moment."""
        backoff = 0.2
        while True:
            try:
                await self._set_up()
                break
            except Exception as exc:
                log.warning("NATS set-up on %s failed (%s); retrying", self.config.nats_server, exc)
                if self._nc is not None and not self._nc.is_closed:
                    await self._nc.close()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
        self._online = True
        await self._send_backlog()

    async def _set_up(self) -> None:
        self._nc = nc = await nats.connect(
            self.config.nats_url,
            **self.config.nats_connect_options(),
            name="mt5-simulator",
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            error_cb=self._on_nats_error,
        )
        self._js = js = nc.jetstream()
        orders_stream = await self._ensure_stream("ORDERS", "orders.>")
        await self._ensure_stream("BROKER", "broker.>")
        for subject, handler, refusal in (
            (CANCEL_SUBJECT, self._cancel, _result),
            (MODIFY_SUBJECT, self._modify, _result),
            (ORDER_STATUS_SUBJECT, self._order_status, _no_orders),
            (POSITIONS_SUBJECT, self._positions, _no_positions),
            (DEALS_SUBJECT, self._deals, _no_deals),
            (QUOTES_SUBJECT, self._quotes, _no_quotes),
        ):
            await nc.subscribe(subject, cb=self._answering(handler, refusal))
        await nc.subscribe(self.config.control_subject, cb=self._on_control)
        self._orders_sub = await js.subscribe(
            ORDERS_FILTER,
            durable=self.config.durable,
            stream=orders_stream,
            cb=self._on_order,
            manual_ack=True,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                ack_wait=30,
                max_ack_pending=MAX_ACK_PENDING,
            ),
        )

    async def _go_offline(self) -> None:
        """Finish the orders already delivered, ack them, then close the connection."""
        if self._nc is None or self._nc.is_closed:
            return
        try:
            if self._orders_sub is not None:
                await asyncio.wait_for(self._orders_sub.drain(), PUBLISH_TIMEOUT_S)
            await self._settle()
        except Exception as exc:
            log.warning("could not drain the order consumer: %s", exc)
        self._online = False
        await self._nc.close()

    async def _ensure_stream(self, suffix: str, subjects: str) -> str:
        """The stream holding ``subjects``: the service's if it exists, else ours (same name)."""
        try:
            return await self._js.find_stream_name_by_subject(subjects)
        except NotFoundError:
            pass
        name = f"{self.config.stream_prefix}_{suffix}"
        try:
            await self._js.add_stream(name=name, subjects=[subjects])
            log.info("created stream %s on %s", name, subjects)
        except BadRequestError:
            # Created meanwhile by the service: use whatever now holds the subjects.
            return await self._js.find_stream_name_by_subject(subjects)
        return name

    async def _on_nats_error(self, exc: Exception) -> None:
        log.warning("NATS: %s", exc)

    # --- orders --------------------------------------------------------------------------

    async def _on_order(self, msg: Msg) -> None:
        try:
            await self._take_order(msg)
        except Exception:
            # Acked anyway: a request that breaks the simulator must not be redelivered forever.
            log.exception("order request failed in the simulator")
            self._unacked.append(msg)
        # Ack in batches: when the delivered queue is empty or the batch is full.
        if self._orders_sub is None or self._orders_sub.pending_msgs == 0 or len(self._unacked) >= ACK_BATCH:
            await self._settle()

    async def _take_order(self, msg: Msg) -> None:
        try:
            request = decode(msg.data, OrderRequest)
        except ContractError as exc:
            await self._refuse_malformed(msg.data, exc)
            self._unacked.append(msg)
            return
        log.info(
            "received %s %s %s %s %s price=%s filling=%s",
            request.order_id, request.symbol, request.action.value, request.type.value,
            request.volume, request.price, request.type_filling.value,
        )  # fmt: skip
        delay = self.faults.latency_s()
        if delay > 0:
            task = asyncio.create_task(self._execute_later(request, msg, delay))
            self._delayed.add(task)
            task.add_done_callback(self._delayed.discard)
            return
        await self._emit(self._submit(request))
        self._unacked.append(msg)

    async def _execute_later(self, request: OrderRequest, msg: Msg, delay: float) -> None:
        await asyncio.sleep(delay)
        await self._emit(self._submit(request))
        await self._flush()
        try:
            await msg.ack()
        except Exception as exc:  # disconnected meanwhile: redelivered, then answered as a duplicate
            log.warning("ack of %s failed: %s", request.order_id, exc)

    def _submit(self, request: OrderRequest) -> list[Event]:
        known = self.book.knows(request.order_id)
        executed = None if known else self.faults.unknown_outcome()
        if executed is not None:
            return self._unknown_outcome(request, executed)
        injected = None if known else self.faults.injected(request.action)
        events, duplicate = self.book.submit(request, self.clock.now(), injected)
        if duplicate:
            log.info("duplicate %s: not executed again, re-publishing its outcome", request.order_id)
        return events

    def _unknown_outcome(self, request: OrderRequest, executed: bool) -> list[Event]:
        """What a terminal that lost its trade server says: the request may or may not have been executed."""
        now = self.clock.now()
        retcode = self.faults.faults.unknown_outcome_retcode
        if executed:
            self.book.submit(request, now, None)  # its fills and placement are not published
        log.warning("fault: %s answered %s, %s", request.order_id, retcode, "executed all the same" if executed else "not executed")
        comment = "Request timeout" if retcode == Retcode.TIMEOUT else "No connection with the trade server"
        return [BrokerError(order_id=request.order_id, symbol=request.symbol, retcode=retcode, comment=comment, timestamp=now)]

    async def _refuse_malformed(self, data: bytes, exc: ContractError) -> None:
        """10013 on broker.error, and in mt5.order_status, if an order_id can be read; else a log line."""
        order_id, symbol = salvage(data)
        log.warning("invalid order request %s (10013): %s", order_id or "without a readable order_id", exc)
        if order_id is None:
            return
        events, duplicate = self.book.refuse(order_id, symbol, f"Invalid request: {exc.detail}", self.clock.now())
        if duplicate:
            log.info("duplicate %s: not taken again, re-publishing its outcome", order_id)
        await self._emit(events)

    async def _settle(self) -> None:
        """Wait for JetStream to store what was published, then ack the orders behind it."""
        await self._flush()
        acks, self._unacked = self._unacked, []
        for msg in acks:
            try:
                await msg.ack()
            except Exception as exc:
                log.warning("ack failed: %s", exc)

    # --- publishing ----------------------------------------------------------------------

    async def _emit(self, events: list[Event]) -> None:
        """Log every event, then publish it through the fault switches (silence, drop, ...)."""
        if events:
            self._dirty = True
        for event in events:
            envelope = envelope_of(event)
            log.info("%s", envelope.label)
            if self.faults.silent():
                log.warning("fault: silent, not published: %s", envelope.label)
                continue
            for outgoing in self.wire.route(envelope):
                await self._send(outgoing)

    async def _publish(self, events: list[Event]) -> None:
        await self._emit(events)
        await self._flush()

    async def _send(self, envelope: Envelope) -> None:
        if not self._online:
            self._backlog.append(envelope)
            return
        try:
            future = await self._js.publish_async(envelope.subject, envelope.payload, headers={"Nats-Msg-Id": envelope.msg_id})
        except Exception as exc:
            log.warning("publish of %s failed (%s); will retry", envelope.label, exc)
            self._backlog.append(envelope)
            return
        self._inflight[next(self._sent)] = (envelope, future)

    async def _flush(self) -> None:
        """Wait until everything published so far is stored; what is not goes to the backlog."""
        pending = list(self._inflight.items())
        if not pending:
            return
        await asyncio.wait([future for _, (_, future) in pending], timeout=PUBLISH_TIMEOUT_S)
        for key, (envelope, future) in pending:
            if self._inflight.pop(key, None) is None:
                continue  # settled by a concurrent flush
            if not future.done():
                future.cancel()
            if future.cancelled() or future.exception() is not None:
                problem = "timed out" if future.cancelled() else future.exception()
                log.warning("publish of %s not confirmed (%s); will retry", envelope.label, problem)
                self._backlog.append(envelope)

    async def _send_backlog(self) -> None:
        backlog, self._backlog = self._backlog, []
        for envelope in backlog:
            await self._send(envelope)
        await self._flush()

    # --- requests ------------------------------------------------------------------------

    def _answering(self, handler: Callable[[bytes], Awaitable[msgspec.Struct]], refusal: Refusal) -> Callable[[Msg], Awaitable[None]]:
        """A request handler: a request it cannot take gets ``refusal``'s reply (a RequestResult,
        or an empty report of the type the asker expects) and a log line with the retcode."""

        async def answer(msg: Msg) -> None:
            if self.faults.silent():
                log.warning("fault: silent, not answering %s", msg.subject)
                return
            try:
                reply = await handler(msg.data)
            except ContractError as exc:
                log.warning("invalid request on %s (10013): %s", msg.subject, exc)
                reply = refusal(salvage(msg.data)[0], Retcode.INVALID, f"Invalid request: {exc.detail}")
            except Exception:
                log.exception("request on %s failed (10011)", msg.subject)
                reply = refusal(salvage(msg.data)[0], Retcode.ERROR, "Internal error of the simulator")
            if msg.reply:
                await msg.respond(encode(reply))

        return answer

    async def _cancel(self, data: bytes) -> msgspec.Struct:
        request = decode(data, CancelRequest)
        result, events = self.book.cancel(request.order_id, self.clock.now())
        log.info("cancel %s: %s %s", request.order_id, result.retcode, result.comment)
        await self._publish(events)
        return result

    async def _modify(self, data: bytes) -> msgspec.Struct:
        request = decode(data, ModifyRequest)
        result = self.book.modify(request, self.clock.now())
        self._dirty = True
        log.info("modify %s: %s %s", request.order_id, result.retcode, result.comment)
        return result

    async def _order_status(self, data: bytes) -> msgspec.Struct:
        return self.book.order_status(decode(data, OrderStatusQuery).order_ids)

    async def _positions(self, data: bytes) -> msgspec.Struct:
        return self.book.positions_report(decode(data, PositionsQuery).symbol)

    async def _quotes(self, data: bytes) -> msgspec.Struct:
        wanted = decode(data, QuotesQuery).symbols
        return QuotesReport(quotes=[self._quote_of(symbol) for symbol in sorted(self.market.quotes) if wanted is None or symbol in wanted])

    def _quote_of(self, symbol: str) -> BrokerQuote:
        quote, now = self.market.quote(symbol), self.clock.now()
        return BrokerQuote(symbol=symbol, bid=quote.bid, ask=quote.ask, time=now, trade_allowed=self.book.session.is_open(now))

    async def _publish_ticks(self, symbols: list[str]) -> None:
        """The new quotes on core NATS (like the terminal's ticks: not stored, not re-sent)."""
        if not self._online or self._nc is None:
            return
        for symbol in symbols:
            await self._nc.publish(f"{TICK_SUBJECT}.{symbol}", encode(self._quote_of(symbol)))

    async def _deals(self, data: bytes) -> msgspec.Struct:
        query = decode(data, DealsQuery)
        until = self.clock.now() if query.until is None else _utc(query.until)
        return self.book.deals(_utc(query.since), until)

    # --- control -------------------------------------------------------------------------

    async def _on_control(self, msg: Msg) -> None:
        disconnect_for = None
        try:
            control = decode(msg.data, SimControl)
            reply: msgspec.Struct = await self.apply(control)
            disconnect_for = control.disconnect_for_s
        except ContractError as exc:
            log.warning("invalid control request: %s", exc)
            reply = RequestResult(order_id=NIL, retcode=Retcode.INVALID, comment=f"Invalid request: {exc.detail}")
        if msg.reply:
            await msg.respond(encode(reply))
        if disconnect_for:
            # After the reply, so the asker learns the switch took effect.
            self._loops.append(asyncio.create_task(self._disconnect_for(disconnect_for)))

    async def apply(self, control: SimControl) -> SimStatus:
        if changes := control.fault_changes():
            self.faults.update(**changes)
            log.warning("fault switches: %s", self.faults.faults)
        if control.silent_for_s is not None:
            self.faults.silence(control.silent_for_s)
            log.warning("fault: silent for %.2f s", control.silent_for_s)
        events: list[Event] = []
        moved: set[str] = set()
        if (quote := control.set_quote) is not None:
            if quote.symbol not in self.market.specs:
                raise ContractError("invalid_field", f"unknown symbol {quote.symbol}", "set_quote.symbol")
            self.market.set_quote(quote.symbol, quote.bid, quote.ask)
            moved.add(quote.symbol)
            events += self.book.on_quote(quote.symbol, self.clock.now())
        for _ in range(control.step):
            now = self.clock.now()
            for symbol in self.market.step():
                moved.add(symbol)
                events += self.book.on_quote(symbol, now)
        if control.advance_s:
            self.clock.advance(control.advance_s)
            events += self.book.expire(self.clock.now())
        adjusted = None
        if (adjust := control.adjust_position) is not None:
            adjusted = self.book.adjust_position(adjust.ticket, adjust.volume)
            self._dirty = True
            log.warning("fault: position %s silently set to %s lots (found: %s)", adjust.ticket, adjust.volume, adjusted)
        await self._publish_ticks(sorted(moved))
        await self._publish(events)
        return self.status(adjusted)

    def status(self, adjusted: bool | None = None) -> SimStatus:
        return SimStatus(
            faults=self.faults.faults,
            silent_for_s=self.faults.silent_for_s(),
            now=self.clock.now(),
            quotes=dict(self.market.quotes),
            adjusted=adjusted,
        )

    async def _disconnect_for(self, seconds: float) -> None:
        log.warning("fault: disconnecting from NATS for %.2f s", seconds)
        await self._go_offline()
        await asyncio.sleep(seconds)
        await self._connect()
        log.warning("fault: reconnected to NATS")

    # --- time ----------------------------------------------------------------------------

    async def _random_walk(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick_ms / 1000)
            now = self.clock.now()
            events: list[Event] = []
            moved = self.market.step()
            for symbol in moved:
                events += self.book.on_quote(symbol, now)
            await self._guarded(self._publish_ticks(moved))
            await self._guarded(self._publish(events))

    async def _replay(self, ticks: list[Tick]) -> None:
        previous = None
        for tick in ticks:
            pause = 0.0
            if previous is not None and self.config.replay_speed > 0:
                pause = max(0.0, (tick.time - previous).total_seconds() / self.config.replay_speed)
            await asyncio.sleep(pause)
            previous = tick.time
            self.market.set_quote(tick.symbol, tick.bid, tick.ask)
            await self._guarded(self._publish_ticks([tick.symbol]))
            await self._guarded(self._publish(self.book.on_quote(tick.symbol, self.clock.now())))
        log.info("tick replay finished after %d ticks; prices stay where they are", len(ticks))

    async def _housekeeping(self) -> None:
        """Expiries, held-back events, the backlog and the state file."""
        while True:
            await asyncio.sleep(HOUSEKEEPING_S)
            await self._guarded(self._chores())

    async def _chores(self) -> None:
        await self._emit(self.book.expire(self.clock.now()))
        for envelope in self.wire.release():
            await self._send(envelope)
        if self._online and self._backlog:
            await self._send_backlog()
        await self._flush()
        if self._dirty and time.monotonic() - self._saved_at >= self.config.state_interval_s:
            self.save_state()

    async def _guarded(self, work: Awaitable[None]) -> None:
        try:
            await work
        except Exception:
            log.exception("simulator loop step failed")

    def save_state(self) -> None:
        if not self.config.state_file:
            return
        state = SimState(book=self.book.snapshot(), quotes=dict(self.market.quotes), clock_offset_s=self.clock.offset_s)
        save_state(self.config.state_file, state)
        self._dirty = False
        self._saved_at = time.monotonic()


def _utc(moment: datetime) -> datetime:
    """A time without a zone is taken as UTC, as MT5's server times are."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def envelope_of(event: Event) -> Envelope:
    """Subject, Nats-Msg-Id and log line of a broker event."""
    payload = encode(event)
    # A symbol that cannot be a subject token (only in a request the broker rejects) must not
    # make the publish fail forever.
    token = event.symbol if SUBJECT_TOKEN.fullmatch(event.symbol) else INVALID_TOKEN
    match event:
        case BrokerFill():
            if event.reason is DealReason.CLIENT:
                label = (
                    f"filled {event.order_id} {event.symbol} {event.side.value} {event.volume} @ {event.price} "
                    f"deal {event.deal} position {event.position} entry {event.entry.value}"
                )
            else:
                label = (
                    f"{event.reason.value} close of position {event.position} {event.symbol} {event.side.value} "
                    f"{event.volume} @ {event.price} deal {event.deal}"
                )
            return Envelope(f"broker.fill.{token}", f"fill-{event.deal}", payload, label)
        case BrokerError():
            label = f"rejected {event.order_id} {event.symbol} retcode {event.retcode} {event.comment}"
            return Envelope(f"broker.error.{token}", f"error-{event.order_id}", payload, label)
        case BrokerPlaced():
            label = f"placed {event.order_id} {event.symbol} ticket {event.ticket}"
            return Envelope(f"broker.placed.{token}", f"placed-{event.order_id}", payload, label)
        case BrokerCancelled():
            verb = "expired" if event.cause is CancelCause.EXPIRED else f"cancelled ({event.cause.value})"
            label = f"{verb} {event.order_id} {event.symbol} ticket {event.ticket} remaining {event.remaining}"
            return Envelope(f"broker.cancelled.{token}", f"cancelled-{event.order_id}", payload, label)
    raise TypeError(f"not a broker event: {event!r}")
