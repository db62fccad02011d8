"""Supervisor: the single router and the parent of every other actor.

It owns the signal_id -> order map (idempotency: a signal seen within the window never gives
a second order), the directory order_id -> OrderActor, the warm pool of OrderActors and the
resting orders. It builds the actor tree, rebuilds state from ClickHouse at start, and
replaces any child that dies: a dead OrderActor's order is revived on a fresh actor from its
last recorded snapshot and reconciled with the broker before anything else.
"""

from __future__ import annotations

import uuid
from collections import deque
from datetime import UTC, datetime, timedelta
from signal import SIGTERM, getsignal
from signal import signal as set_handler
from typing import Any

import msgspec
from thespian.actors import (
    ActorExitRequest,
    ChildActorExited,
    DeadEnvelope,
    WakeupMessage,
)

from actors.archiver import Archiver
from actors.base import RoleActor
from actors.gateway import BrokerGateway
from actors.ingress import Ingress
from model.order import TERMINAL, is_resting, needs_actor
from actors.order import OrderActor
from actors.positions import PositionKeeper
from actors.recorder import Recorder
from actors.status_publisher import StatusPublisher
from messages import broker as wire
from messages.actor import (
    Assign,
    BrokerNews,
    BrokerUpdate,
    CancelAnswer,
    CancelOrder,
    CancelRequest,
    Configure,
    Directory,
    Drain,
    Drained,
    GetDirectory,
    GetHistory,
    GetPeers,
    History,
    LoadState,
    ModifyAnswer,
    ModifyCommand,
    ModifyOrder,
    OrderDirectoryEntry,
    Orphan,
    Peers,
    QueryBroker,
    Ready,
    Record,
    Recorded,
    Rehydrate,
    Rehydrated,
    Release,
    Released,
    ShowOrder,
    SignalDeclined,
    SignalSettled,
    SignalsReceived,
    Start,
    Started,
    StateLoaded,
)
from messages.control import (
    CancelResting,
    CancelsSent,
    ControlAnswer,
    ControlRecord,
    ControlRecorded,
    Flatten,
    Flattening,
    GetQuotes,
    GetStatus,
    HaltTrading,
    Quotes,
    RecordControl,
    ResumeTrading,
    ServiceStatus,
    SignalAlert,
    TradingHalt,
    flatten_signal_id,
)
from messages.enums import OrderStatus, OrderType, PositionSide, Side, SignalType, TimeInForce
from messages.order import Order, OrderEvent, order_id_for
from messages.signal import SignalRefused, TradingSignal, fingerprint
from messages.symbols import SYMBOLS
from model.exposure import Exposure, OpenPosition, PositionsView, closing_side
from service import metrics
from service.config import Settings
from service.logs import Log
from service.partitions import EVERYTHING

log = Log(__name__)

ROLES: dict[str, type] = {
    "recorder": Recorder,
    "archiver": Archiver,
    "status_publisher": StatusPublisher,
    "gateway": BrokerGateway,
    "positions": PositionKeeper,
    "ingress": Ingress,
}
# Ingress starts last: signals flow only once everything else is ready.
SERVICE_ROLES = ("archiver", "status_publisher", "gateway", "positions")
STATUS_QUERY_CHUNK = 500
EXPIRY_GRACE = timedelta(seconds=5)
CLOSE_WAIT = timedelta(seconds=5)
DEFERRED_CLOSES = "deferred closes"
# A recovered resting order the broker has not answered for (a status query lost or timed out
# on a loaded connector) is asked about again this soon, not at the next periodic sweep.
RECOVERY_ASK_AGAIN = timedelta(seconds=5)
RECOVERY_UNANSWERED = "recovered orders unanswered"
RELEASED_KEPT = timedelta(seconds=60)
REHYDRATE_TIMEOUT = timedelta(seconds=10)


def order_from_signal(signal: TradingSignal, settings: Settings, close: tuple[int | None, float] | None = None) -> Order:
    """The one order an executable signal gives (model.pretrade.check_signal has passed, or the
    broker has the order already: Supervisor._adopt);
    a close names the position it closes and how much of it (``close``)."""
    side = Side.BUY if signal.signal_type in (SignalType.BUY, SignalType.CLOSE_SHORT) else Side.SELL
    order_type = OrderType.MARKET if signal.closes else signal.order_type or OrderType(settings.default_order_type)
    limit = signal.limit_price or signal.entry_price if order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) else None
    stop = signal.stop_price or signal.entry_price if order_type in (OrderType.STOP, OrderType.STOP_LIMIT) else None
    ticket, quantity = close if close is not None else (None, signal.volume or 0.0)
    return Order(
        order_id=order_id_for(signal.signal_id),
        signal_id=signal.signal_id,
        symbol=signal.symbol,
        side=side,
        order_type=order_type,
        quantity=quantity,
        expected_price=signal.expected_price or 0.0,
        created_at=datetime.now(UTC),
        price=limit,
        stop_price=stop,
        stop_loss=signal.stop_loss,
        take_profit=signal.take_profit,
        time_in_force=signal.time_in_force or TimeInForce(settings.default_time_in_force),
        expires_at=signal.expiry,
        timeframe=signal.timeframe,
        signal_fingerprint=fingerprint(signal),
        closes_position=signal.closes,
        close_position=ticket,
    )


def flatten_order(halt: TradingHalt, position: OpenPosition, quantity: float, quote: tuple[float, float], settings: Settings) -> Order:
    """The market order a flatten closes a position with: priced at the side of the quote it
    closes against (what its slippage is measured from), its signal_id derived from the halt
    and the position, so a repeated flatten names the same order."""
    side = Side.SELL if position.side is PositionSide.LONG else Side.BUY
    bid, ask = quote
    signal_id = flatten_signal_id(halt.halt_id, position.ticket)
    return Order(
        order_id=order_id_for(signal_id),
        signal_id=signal_id,
        symbol=position.symbol,
        side=side,
        order_type=OrderType.MARKET,
        quantity=quantity,
        expected_price=bid if side is Side.SELL else ask,
        created_at=datetime.now(UTC),
        time_in_force=TimeInForce(settings.default_time_in_force),
        closes_position=True,
        close_position=position.ticket,
    )


class Supervisor(RoleActor):
    def __init__(self) -> None:
        super().__init__()
        self.peers = Peers()
        # signal_id -> (order_id, the signal's fingerprint, when it was seen)
        self.known: dict[uuid.UUID, tuple[uuid.UUID, str, datetime]] = {}
        self.replays = 0
        self.exposure = Exposure()
        # Close signals waiting for the position they close: signal_id -> (signal, ingress, since)
        self.deferred_closes: dict[uuid.UUID, tuple[TradingSignal, Any, datetime]] = {}
        self.active: dict[uuid.UUID, Any] = {}
        self.active_orders: dict[uuid.UUID, Order] = {}
        self.resting: dict[uuid.UUID, Order] = {}
        self.idle: list[Any] = []
        self.pool_size = 0
        self.waiting: deque[Assign] = deque()
        self.awaiting_ready: set[str] = set()
        self.drain_asker: Any = None
        self.stopping = False
        self.starter: Any = None
        # Orders whose actor died, as they were last assigned, until revived.
        self.reviving: dict[uuid.UUID, Order] = {}
        # Orders asked of the recorder to be revived, when, and the news that asked: one revival
        # at a time (two actors reviving an order from the same version write two histories
        # with the same event_ids). Asked again if the answer is lost (with a recorder).
        self.rehydrating: dict[uuid.UUID, tuple[datetime, BrokerNews | None]] = {}
        # Orders an actor gave back lately with events the recorder had not acknowledged yet:
        # (the actor, those events, when). If the actor dies before the recorder has them (a
        # hand-over lost, not sent again), they are handed over from here: another actor may
        # hold the order since, and its events wait for these (service/taken.py).
        self.released: dict[uuid.UUID, tuple[Any, list[OrderEvent], datetime]] = {}
        # Orders recovered at start and not yet confirmed with the broker.
        self.reconciling: set[uuid.UUID] = set()
        self.started_at = datetime.now(UTC)
        # (address, role) of actors that died, to route what was still sent to them.
        self.retired: list[tuple[Any, str]] = []
        # Operators asking to cancel (None) or modify an order that is not open, until its
        # history says what became of it.
        self.history_askers: dict[uuid.UUID, list[tuple[Any, ModifyOrder | None]]] = {}
        # The trading halt in force (None: trading), as execution_control records it; what
        # status and the metrics read. Its changes are numbered; the last one may not be
        # recorded yet (or its write failed: then the next command writes it again).
        self.halted: TradingHalt | None = None
        self.control_version = 0
        self.control_recorded = True
        # Operators waiting for a control change to be recorded, by its version.
        self.control_askers: dict[int, tuple[Any, ControlAnswer]] = {}
        self.flatten_askers: list[Any] = []
        # Signals refused under the halt in force: only the first one is an alert.
        self.halt_refusals = 0
        # Open orders rebuilt at start, and when the last of them was reconciled.
        self.recovered = 0
        self.reconciled_after_s: float | None = None
        # What this tree serves: a partition, or everything (a single instance).
        self.share = EVERYTHING
        self._stop_at_sigterm()

    def _stop_at_sigterm(self) -> None:
        """Thespian makes a SIGTERM an ActorExitRequest, but queues it behind the deaths of the
        children that the same SIGTERM (to every process of the service) kills: replaced
        meanwhile, their successors got no SIGTERM, and Thespian waits for every child to exit."""
        exit_request = getsignal(SIGTERM)
        if not callable(exit_request):
            return  # (not forked by Thespian: a test's instance)

        def stopping(signum: int, frame: Any) -> None:
            self.stopping = True
            exit_request(signum, frame)

        set_handler(SIGTERM, stopping)

    # --- start-up ------------------------------------------------------------------------------

    def receiveMsg_Start(self, message: Start, sender: Any) -> None:
        self.settings: Settings = message.settings
        self.share = message.share
        self.starter = sender
        # Messages sent to an actor that died come here, to be passed to its successor (one
        # handler per actor system: a partition's tree hears of them from its coordinator).
        if self.share.whole:
            self.handleDeadLetters()
        self.peers = Peers(supervisor=self.myAddress, recorder=self.createActor(Recorder))
        self._configure(self.peers.recorder)

    def _configure(self, actor: Any) -> None:
        self.send(actor, Configure(self.settings, self.peers, self.share))

    def receiveMsg_Ready(self, message: Ready, sender: Any) -> None:
        if message.role == "recorder" and self.peers.gateway is None:
            self.send(self.peers.recorder, LoadState(self.settings.idempotency_window_hours, self.share))
        elif message.role in self.awaiting_ready:
            self.awaiting_ready.discard(message.role)
            if message.role == "gateway":
                self._sweep_resting()  # the broker can be asked about recovered orders now
                self.wakeupAfter(RECOVERY_ASK_AGAIN, payload=RECOVERY_UNANSWERED)
            if not self.awaiting_ready and self.peers.ingress is None:
                self._start_ingress()
        elif message.role == "ingress" and self.starter is not None:
            open_orders = len(self.active) + len(self.resting) + len(self.waiting)
            self.send(self.starter, Started(self.peers, open_orders, self.halted))
            self.starter = None
            log.info("service started: %d open orders being reconciled", open_orders)

    def receiveMsg_StateLoaded(self, message: StateLoaded, sender: Any) -> None:
        now = datetime.now(UTC)
        self.known = {signal_id: (order_id, digest, now) for signal_id, (order_id, digest) in message.known_signals.items()}
        if message.control is not None:
            self.control_version, self.halted = message.control.version, message.control.halt
        if self.halted is not None:
            halt = self.halted
            log.warning("trading is halted (halt %s since %s UTC: %s): signals are refused until resumed", halt.halt_id, f"{halt.since:%Y-%m-%d %H:%M:%S}", halt.reason)
        self.recovered = len(message.open_orders)
        created = {role: self.createActor(ROLES[role]) for role in SERVICE_ROLES}
        self.peers = Peers(supervisor=self.myAddress, recorder=self.peers.recorder, **created)
        self.send(self.peers.recorder, self.peers)
        self.awaiting_ready = set(SERVICE_ROLES)
        for role in SERVICE_ROLES:
            self._configure(created[role])
        for _ in range(self.settings.order_actor_pool):
            self.idle.append(self._new_order_actor())
        # Whatever happened while we were away, the broker knows: ask before anything else.
        # Resting orders are asked about in bulk; an order in flight gets an actor that asks.
        self.started_at = now
        for order in message.open_orders:
            self.exposure.track(order, already_applied=order.filled_quantity)
            self.reconciling.add(order.order_id)
            if is_resting(order):
                self.resting[order.order_id] = order
            else:
                self._assign(Assign(order, reconcile=True))
        self.wakeupAfter(timedelta(seconds=self.settings.reconcile_interval_s))

    def _start_ingress(self) -> None:
        self.peers = Peers(**{**_peer_fields(self.peers), "ingress": self.createActor(Ingress)})
        self._broadcast_peers()
        self._configure(self.peers.ingress)

    def _new_order_actor(self) -> Any:
        actor = self.createActor(OrderActor)
        self._configure(actor)
        self.pool_size += 1
        return actor

    def _broadcast_peers(self) -> None:
        for role in ROLES:
            address = getattr(self.peers, role)
            if address is not None:
                self.send(address, self.peers)
        for actor in [*self.idle, *self.active.values()]:
            self.send(actor, self.peers)

    # --- signals -------------------------------------------------------------------------------

    def receiveMsg_SignalsReceived(self, message: SignalsReceived, sender: Any) -> None:
        for signal in message.signals:
            self._consider(signal, sender, datetime.now(UTC), message.at_broker.get(signal.signal_id))

    def _consider(self, signal: TradingSignal, ingress: Any, since: datetime, at_broker: wire.BrokerOrderReport | None = None) -> None:
        """Take the signal, or decline it with the reason. A close that finds no position while
        the fills of an order that opened one are still on their way to the position keeper
        waits for the keeper's next view (CLOSE_WAIT at most) instead of being refused."""
        try:
            self._take(signal, ingress, at_broker)
        except SignalRefused as refused:
            side = PositionSide.LONG if signal.signal_type is SignalType.CLOSE_LONG else PositionSide.SHORT
            if (
                refused.reason in ("no_open_position", "close_exceeds_position")
                and datetime.now(UTC) - since < CLOSE_WAIT
                and self.exposure.awaiting_fills(signal.symbol, side)
            ):
                self.deferred_closes[signal.signal_id] = (signal, ingress, since)
                self.wakeupAfter(CLOSE_WAIT, payload=DEFERRED_CLOSES)
                return
            log.warning("signal %s refused: %s: %s", signal.signal_id, refused.reason, refused.detail)
            self.send(ingress, SignalDeclined(signal.signal_id, refused.reason, refused.detail))
        except Exception as exc:  # one signal's bug must not take the others down with it
            log.error("signal %s failed: %r", signal.signal_id, exc, exc_info=exc)
            self.send(ingress, SignalDeclined(signal.signal_id, "internal_error", repr(exc)))

    def _retry_deferred_closes(self) -> None:
        waiting, self.deferred_closes = self.deferred_closes, {}
        for signal, ingress, since in waiting.values():
            self._consider(signal, ingress, since)

    def _take(self, signal: TradingSignal, ingress: Any, at_broker: wire.BrokerOrderReport | None) -> None:
        """One order for a new signal; a replay is acknowledged, a conflicting one refused."""
        if signal.signal_id in self.known:
            order_id, digest, _ = self.known[signal.signal_id]
            if digest and digest != fingerprint(signal):
                raise SignalRefused(
                    "duplicate_conflict",
                    f"signal_id {signal.signal_id} already gave order {order_id} with other content; this one is not executed",
                )
            self.replays += 1
            metrics.SIGNALS.labels("replay").inc()
            log.info("signal %s already gave order %s: replay ignored (%d so far)", signal.signal_id, order_id, self.replays)
            self.send(ingress, SignalSettled(signal.signal_id))
            return
        if at_broker is not None:
            self._adopt(signal, at_broker)
            return
        if self.halted is not None:
            self._refuse_while_halted(signal.signal_id, self.halted)
        limits = self.settings.limits
        if signal.closes:
            side = Side.BUY if signal.signal_type is SignalType.CLOSE_SHORT else Side.SELL
            order = order_from_signal(signal, self.settings, self.exposure.choose_close(signal.symbol, closing_side(side), signal.volume))
        else:
            self.exposure.check_open(signal.symbol, signal.volume or 0.0, limits.max_symbol_exposure)
            order = order_from_signal(signal, self.settings)
        self.known[signal.signal_id] = (order.order_id, order.signal_fingerprint, datetime.now(UTC))
        self.exposure.track(order)
        self._assign(Assign(order))
        metrics.SIGNALS.labels("executed").inc()

    def _adopt(self, signal: TradingSignal, report: wire.BrokerOrderReport) -> None:
        """The order of a signal that came again is at the broker already: a tree sent it and
        died before recording it. It is taken as the broker has it, whatever the checks would
        say now (the position it closed is gone, trading is halted): recorded, reconciled,
        never sent again."""
        close = None
        if signal.closes:
            close = (next((deal.position for deal in report.deals if deal.position), None), report.volume)
        order = order_from_signal(signal, self.settings, close)
        log.warning("signal %s came again and its order %s is at the broker already (%s): taken as the broker has it",
                    signal.signal_id, order.order_id, report.state.value)  # fmt: skip
        self.known[signal.signal_id] = (order.order_id, order.signal_fingerprint, datetime.now(UTC))
        self.exposure.track(order)
        self._assign(Assign(order, reconcile=True, news=report))
        metrics.SIGNALS.labels("at_broker").inc()

    def _refuse_while_halted(self, signal_id: uuid.UUID, halt: TradingHalt) -> None:
        detail = f"trading is halted since {halt.since:%Y-%m-%d %H:%M:%S} UTC ({halt.reason}); the signal is not executed"
        self.halt_refusals += 1
        if self.halt_refusals == 1:  # one alert per halt, not one per signal: the dead letters tell the rest
            self.send(self.peers.ingress, SignalAlert("trading_halted", f"{detail}; later signals are refused too", signal_id))
        raise SignalRefused("trading_halted", detail)

    def receiveMsg_PositionsView(self, message: PositionsView, sender: Any) -> None:
        self.exposure.see(message)
        self._retry_deferred_closes()

    # --- the pool -----------------------------------------------------------------------------

    def _assign(self, assignment: Assign) -> None:
        order_id = assignment.order.order_id
        if self.idle:
            actor = self.idle.pop()
        elif self.pool_size < self.settings.order_actor_max:
            actor = self._new_order_actor()
        else:
            self._wait_for_an_actor(assignment)
            return
        self.active[order_id] = actor
        self.active_orders[order_id] = assignment.order
        self.resting.pop(order_id, None)
        self.send(actor, assignment)

    def _wait_for_an_actor(self, assignment: Assign) -> None:
        """Queued for the next free actor; one queued for the same order already takes this one
        in (two would give the order two actors). Two pieces of news: it asks the broker."""
        order_id = assignment.order.order_id
        queued = next((i for i, w in enumerate(self.waiting) if w.order.order_id == order_id), None)
        if queued is None:
            self.waiting.append(assignment)
            return
        first = self.waiting[queued]
        self.waiting[queued] = Assign(
            max(first.order, assignment.order, key=lambda order: order.version),
            reconcile=first.reconcile or assignment.reconcile or (first.news is not None and assignment.news is not None),
            news=assignment.news or first.news,
            cancel=assignment.cancel or first.cancel,
            modify=assignment.modify or first.modify,
        )

    def receiveMsg_Released(self, message: Released, sender: Any) -> None:
        order = message.order
        self._reconciled(order.order_id)
        self.active.pop(order.order_id, None)
        self.active_orders.pop(order.order_id, None)
        if message.unacknowledged:
            self.released[order.order_id] = (sender, message.unacknowledged, datetime.now(UTC))
        if order.status in TERMINAL:
            self.exposure.ended(order, datetime.now(UTC))
        else:
            self.resting[order.order_id] = order
        self.idle.append(sender)
        if self.waiting:
            self._assign(self.waiting.popleft())

    # --- news for orders no actor holds -------------------------------------------------------------

    def receiveMsg_Orphan(self, message: Orphan, sender: Any) -> None:
        self._revive(message.update.order_id, message.update.news)

    def receiveMsg_BrokerUpdate(self, message: BrokerUpdate, sender: Any) -> None:
        """A status report on a resting order, from the periodic sweep."""
        order = self.resting.get(message.order_id)
        report = message.news
        if order is None or not isinstance(report, wire.BrokerOrderReport):
            return
        spec = SYMBOLS[order.symbol]
        news = spec.steps(report.filled_volume) > spec.steps(order.filled_quantity) or (report.triggered and order.triggered_at is None)
        if report.state is not wire.BrokerOrderState.PLACED or news:
            self._assign(Assign(order, news=report))
        else:
            self._reconciled(order.order_id)

    def _reconciled(self, order_id: uuid.UUID) -> None:
        """An order recovered at start is back in step with the broker."""
        if order_id in self.reconciling:
            self.reconciling.discard(order_id)
            if not self.reconciling:
                self.reconciled_after_s = (datetime.now(UTC) - self.started_at).total_seconds()
                log.info("recovery: every open order reconciled with the broker %.2fs after the state was loaded", self.reconciled_after_s)

    def _revive(self, order_id: uuid.UUID, news: BrokerNews) -> None:
        if order_id in self.active:
            self.send(self.active[order_id], BrokerUpdate(order_id, news))
        elif order_id in self.resting:
            self._assign(Assign(self.resting[order_id], news=news))
        else:
            self._rehydrate(order_id, news)

    def _rehydrate(self, order_id: uuid.UUID, news: BrokerNews | None = None) -> None:
        now = datetime.now(UTC)
        asked = self.rehydrating.get(order_id)
        # (an answer not back within REHYDRATE_TIMEOUT was lost with a recorder: asked again)
        if asked is not None and now - asked[0] < REHYDRATE_TIMEOUT or any(w.order.order_id == order_id for w in self.waiting):
            return  # the revival under way asks the broker (reconcile): it hears of this news too
        self.rehydrating[order_id] = (now, news)
        self.send(self.peers.recorder, Rehydrate(order_id, news))

    def _rehydrate_again(self, older_than: timedelta) -> None:
        """Ask again for the revivals not answered within ``older_than``: the Rehydrate or its
        answer was lost (with a recorder that died, or on the way), and no news may come to ask."""
        now = datetime.now(UTC)
        for order_id, (asked, news) in list(self.rehydrating.items()):
            if now - asked >= older_than:
                log.warning("the revival of order %s was not answered: asked again", order_id)
                del self.rehydrating[order_id]
                self._rehydrate(order_id, news)

    def receiveMsg_Rehydrated(self, message: Rehydrated, sender: Any) -> None:
        """Revive from the latest of what was recorded, what this supervisor last handed out
        (an actor may die before anything of its order was recorded) and what an actor gave
        back with events not recorded yet."""
        order = message.order
        assigned = self.reviving.pop(message.order_id, None)
        self.rehydrating.pop(message.order_id, None)
        if message.order_id in self.active:  # revived meanwhile: its actor hears the news, no second actor
            if message.news is not None:
                self.send(self.active[message.order_id], BrokerUpdate(message.order_id, message.news))
            return
        released = self.released.get(message.order_id)
        for latest in (assigned, released[1][-1].order if released else None):
            # (events not recorded yet: the next actor's events must follow them, not fork)
            if latest is not None and (order is None or latest.version > order.version):
                order = latest
        if order is None:
            log.error("broker news for an order never recorded here: %s", message.news)
            return
        if message.news is None and order.status in TERMINAL and not needs_actor(order):
            return  # its recorded history ends: nothing to revive
        self._assign(Assign(order, reconcile=True, news=message.news))

    # --- operator commands and tracing ----------------------------------------------------------------

    def receiveMsg_CancelOrder(self, message: CancelOrder, sender: Any) -> None:
        if message.order_id in self.resting:
            self._assign(Assign(self.resting[message.order_id], cancel=message))
        elif message.order_id in self.active:
            self.send(self.active[message.order_id], message)
        else:
            log.warning("cancel of %s: not an open order", message.order_id)

    def receiveMsg_CancelRequest(self, message: CancelRequest, sender: Any) -> None:
        """An operator's cancel, answered: an open order's goes ahead; for any other, what
        became of it is looked up in its history, so the refusal can say."""
        order_id = self.known[message.key][0] if message.key in self.known else message.key
        order = self.resting.get(order_id) or self.active_orders.get(order_id)
        if order is not None:
            self.receiveMsg_CancelOrder(CancelOrder(order_id, message.reason), sender)
            self.send(sender, CancelAnswer(order_id, True, f"cancelling it (it was {order.status.value})"))
        else:
            self._ask_history(order_id, sender, None)

    def receiveMsg_ModifyOrder(self, message: ModifyOrder, sender: Any) -> None:
        if message.order_id in self.resting:
            self._assign(Assign(self.resting[message.order_id], modify=message))
        elif message.order_id in self.active:
            self.send(self.active[message.order_id], message)
        else:
            log.warning("modify of %s: not an open order", message.order_id)

    def receiveMsg_ModifyCommand(self, message: ModifyCommand, sender: Any) -> None:
        """An operator's modify, answered: an open order's goes to its actor; a filled one's
        (the SL/TP of its position) once its history has given the order."""
        order_id = self.known[message.key][0] if message.key in self.known else message.key
        order = self.resting.get(order_id) or self.active_orders.get(order_id)
        if order is not None:
            self.receiveMsg_ModifyOrder(ModifyOrder(order_id, message.change), sender)
            self.send(sender, ModifyAnswer(order_id, True, f"modifying it (it was {order.status.value})"))
        else:
            self._ask_history(order_id, sender, ModifyOrder(order_id, message.change))

    def _ask_history(self, order_id: uuid.UUID, asker: Any, modify: ModifyOrder | None) -> None:
        self.history_askers.setdefault(order_id, []).append((asker, modify))
        self.send(self.peers.recorder, GetHistory(order_id))

    def receiveMsg_History(self, message: History, sender: Any) -> None:
        order_id = message.order_id
        latest = max(message.events, key=lambda e: e.seq).order if message.events else None
        for asker, modify in self.history_askers.pop(order_id, []):
            if modify is not None and latest is not None and latest.status is OrderStatus.FILLED:
                if order_id in self.active:  # an earlier modify's actor holds it
                    self.send(self.active[order_id], modify)
                else:
                    self._assign(Assign(latest, modify=modify))
                self.send(asker, ModifyAnswer(order_id, True, "modifying the position it opened (the order is filled)"))
                continue
            verb = "cancel" if modify is None else "modify"
            if latest is None:
                reason = f"no order {order_id} is known"
            elif latest.status in TERMINAL:
                reason = f"order {order_id} is already {latest.status.value}: nothing to {verb}"
            else:  # queued for an actor, or being revived after its actor died
                reason = f"order {order_id} is {latest.status.value} but between actors right now: try again"
            self.send(asker, CancelAnswer(order_id, False, reason) if modify is None else ModifyAnswer(order_id, False, reason))

    def receiveMsg_ShowOrder(self, message: ShowOrder, sender: Any) -> None:
        order_id = self.known[message.key][0] if message.key in self.known else message.key
        actor = self.active.get(order_id)
        order = self.resting.get(order_id) or self.active_orders.get(order_id)
        self.send(
            sender,
            OrderDirectoryEntry(
                order_id=order_id,
                actor=actor,
                actor_address=str(actor) if actor is not None else (order.actor_address if order else ""),
                active=actor is not None,
                order=order,
            ),
        )

    # --- the trading halt ----------------------------------------------------------------------------

    def receiveMsg_HaltTrading(self, message: HaltTrading, sender: Any) -> None:
        changed = self.halted is None
        if self.halted is None:
            self.halted = TradingHalt(halt_id=uuid.uuid4(), reason=message.reason, since=datetime.now(UTC))
            self.halt_refusals = 0
            log.warning("trading halted (halt %s): %s; signals are refused until resumed", self.halted.halt_id, message.reason)
            self.send(self.peers.ingress, SignalAlert("halt", f"trading halted: {message.reason}; signals are refused until resumed"))
        self._record_control(sender, changed)

    def receiveMsg_ResumeTrading(self, message: ResumeTrading, sender: Any) -> None:
        """Accepted when not halted too (nothing to do): the operator wants trading, and it is."""
        changed = self.halted is not None
        if self.halted is not None:
            ended = f"halt {self.halted.halt_id} since {self.halted.since:%Y-%m-%d %H:%M:%S} UTC ({self.halted.reason}), {self.halt_refusals} signals refused"
            log.warning("trading resumed: %s", ended)
            self.send(self.peers.ingress, SignalAlert("resume", f"trading resumed: {ended}"))
            self.halted = None
        self._record_control(sender, changed)

    def _record_control(self, asker: Any, changed: bool) -> None:
        """Record the control in force when it changed (or its last record failed); the operator
        hears once it is in ClickHouse, so that a halt answered survives a restart."""
        answer = ControlAnswer(self.halted, changed)
        if not changed and self.control_recorded:
            self.send(asker, answer)
            return
        self.control_version += 1
        self.control_recorded = False
        self.control_askers[self.control_version] = (asker, answer)
        self.send(self.peers.recorder, RecordControl(ControlRecord(version=self.control_version, halt=self.halted, at=datetime.now(UTC))))

    def receiveMsg_ControlRecorded(self, message: ControlRecorded, sender: Any) -> None:
        if message.version == self.control_version:
            self.control_recorded = message.error is None
        if (waiting := self.control_askers.pop(message.version, None)) is not None:
            asker, answer = waiting
            self.send(asker, msgspec.structs.replace(answer, error=message.error))

    def receiveMsg_CancelResting(self, message: CancelResting, sender: Any) -> None:
        """Cancel every working order: resting at the broker, or a pending one on its way there."""
        pending = [
            order_id for order_id, order in self.active_orders.items()
            if order.order_type is not OrderType.MARKET and order.status not in TERMINAL  # (a filled one held for a modify)
        ]  # fmt: skip
        working = [*self.resting, *pending]
        for order_id in working:
            self.receiveMsg_CancelOrder(CancelOrder(order_id, message.reason), self.myAddress)
        log.warning("cancelling %d working orders: %s", len(working), message.reason)
        self.send(sender, CancelsSent(working))

    def receiveMsg_Flatten(self, message: Flatten, sender: Any) -> None:
        """Close every open position at market, once the quotes to price the closes are in."""
        if self.halted is None:
            self.send(sender, Flattening([], [], "trading is not halted: a flatten belongs to a halt (its orders are named after it)"))
            return
        self.flatten_askers.append(sender)
        self.send(self.peers.ingress, GetQuotes(sorted({position.symbol for position in self.exposure.positions.values()})))

    def receiveMsg_Quotes(self, message: Quotes, sender: Any) -> None:
        askers, self.flatten_askers = self.flatten_askers, []
        if self.halted is None:
            answer = Flattening([], [], "trading was resumed before the flatten could start")
        else:
            answer = self._flatten(self.halted, message.quotes)
        for asker in askers:
            self.send(asker, answer)

    def _flatten(self, halt: TradingHalt, quotes: dict[str, tuple[float, float]]) -> Flattening:
        """The closes go the way a close signal's order goes (its position chosen here, tracked
        in the exposure, recorded and archived); each position is closed once per halt."""
        order_ids, not_closed = [], []
        for position in sorted(self.exposure.positions.values(), key=lambda p: (p.opened_at, p.ticket)):
            signal_id = flatten_signal_id(halt.halt_id, position.ticket)
            quantity = self.exposure.available(position)
            if signal_id in self.known:  # this halt is closing it already
                order_ids.append(self.known[signal_id][0])
            elif quantity <= 0:
                log.info("flatten: position %d is being closed by another order already", position.ticket)
            elif position.symbol not in quotes:
                not_closed.append(f"position {position.ticket} {position.symbol}: no quote from the connector to price its close")
            else:
                order = flatten_order(halt, position, quantity, quotes[position.symbol], self.settings)
                self.known[signal_id] = (order.order_id, order.signal_fingerprint, datetime.now(UTC))
                self.exposure.track(order)
                self._assign(Assign(order))
                order_ids.append(order.order_id)
        log.warning("flatten under halt %s: %d close orders, %d positions not closed", halt.halt_id, len(order_ids), len(not_closed))
        return Flattening(order_ids, not_closed)

    def receiveMsg_GetStatus(self, message: GetStatus, sender: Any) -> None:
        self.send(
            sender,
            ServiceStatus(
                halt=self.halted,
                active_orders=len(self.active),
                resting_orders=len(self.resting),
                waiting_orders=len(self.waiting),
                recovered_orders=self.recovered,
                reconciling_orders=len(self.reconciling),
                reconciled_after_s=self.reconciled_after_s,
                asked=message.asked,
            ),
        )

    def receiveMsg_GetPeers(self, message: GetPeers, sender: Any) -> None:
        self.send(sender, self.peers)

    def receiveMsg_GetDirectory(self, message: GetDirectory, sender: Any) -> None:
        self.send(sender, Directory(self.peers, [*self.idle, *self.active.values()]))

    def doing(self) -> str:
        return (
            f"{len(self.active)} active, {len(self.resting)} resting, {len(self.waiting)} waiting, "
            f"{len(self.reconciling)} reconciling orders; {self.replays} replays ignored"
            f"{'; trading HALTED' if self.halted is not None else ''}"
        )

    def set_gauges(self) -> None:
        metrics.book(
            active=len(self.active), resting=len(self.resting), waiting=len(self.waiting),
            idle=len(self.idle), pool=self.pool_size, halted=self.halted is not None,
        )  # fmt: skip

    # --- housekeeping -------------------------------------------------------------------------------

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        if self.stopping:
            return
        if message.payload == DEFERRED_CLOSES:
            self._retry_deferred_closes()  # those past CLOSE_WAIT are declined now
            return
        if message.payload == RECOVERY_UNANSWERED:
            self._ask_again_about_recovered()
            return
        now = datetime.now(UTC)
        window = timedelta(hours=self.settings.idempotency_window_hours)
        self.known = {s: v for s, v in self.known.items() if now - v[2] <= window}
        # By now a released order's events have long left its actor (or were resent).
        self.released = {o: v for o, v in self.released.items() if now - v[2] <= RELEASED_KEPT}
        self.exposure.expire(now)
        self._rehydrate_again(REHYDRATE_TIMEOUT)
        for order in list(self.resting.values()):
            if order.expires_at is not None and order.expires_at + EXPIRY_GRACE < now:
                self.receiveMsg_CancelOrder(CancelOrder(order.order_id, "expired (system)"), self.myAddress)
        self._sweep_resting()
        self.wakeupAfter(timedelta(seconds=self.settings.reconcile_interval_s))

    def _sweep_resting(self, only: set[uuid.UUID] | None = None) -> None:
        """Ask the broker about every resting order (or those of `only`); the reports come back
        as BrokerUpdate."""
        resting = [order_id for order_id in self.resting if only is None or order_id in only]
        for start in range(0, len(resting), STATUS_QUERY_CHUNK):
            self.send(self.peers.gateway, QueryBroker(resting[start : start + STATUS_QUERY_CHUNK]))

    def _ask_again_about_recovered(self) -> None:
        """Until every recovered resting order is reconciled; an order an actor holds asks the
        broker on its own timer."""
        unanswered = self.reconciling & self.resting.keys()
        if unanswered:
            log.warning("recovery: the broker has not answered for %d resting orders yet; asking again", len(unanswered))
            self._sweep_resting(only=unanswered)
        if self.reconciling:
            self.wakeupAfter(RECOVERY_ASK_AGAIN, payload=RECOVERY_UNANSWERED)

    def receiveMsg_ChildActorExited(self, message: ChildActorExited, sender: Any) -> None:
        if not self.stopping:
            self._child_died(message.childAddress)

    def _child_died(self, dead: Any) -> None:
        """Replace a dead child; a dead OrderActor's order is revived from its last record.
        Called for ChildActorExited and for the first letter that could not reach a child
        (when two children die at once, Thespian may report only one of them)."""
        if any(address == dead for address, _ in self.retired):
            return
        for role in ROLES:
            if getattr(self.peers, role) == dead:
                log.error("%s died: restarting it", role)
                metrics.ACTOR_RESTARTS.labels(role).inc()
                self.retired.append((dead, role))
                self.peers = Peers(**{**_peer_fields(self.peers), role: self.createActor(ROLES[role])})
                self._configure(getattr(self.peers, role))
                self._broadcast_peers()
                if role == "recorder":
                    self.resend_all()  # the events of released orders it handed over itself
                    self._rehydrate_again(timedelta(0))  # the dead one will not answer
                return
        if not any(actor == dead for actor in [*self.idle, *self.active.values()]):
            return  # not a child of ours (any more)
        self.pool_size -= 1
        self.retired.append((dead, "order"))
        metrics.ACTOR_RESTARTS.labels("order").inc()
        self.idle = [actor for actor in self.idle if actor != dead]
        for order_id, actor in list(self.active.items()):
            if actor == dead:
                log.error("the actor of order %s died: reviving the order", order_id)
                del self.active[order_id]
                self.reviving[order_id] = self.active_orders.pop(order_id)
                self._rehydrate(order_id)
        for order_id, (actor, events, _) in list(self.released.items()):
            if actor == dead:
                del self.released[order_id]
                log.warning("the actor that released order %s died: its last events are handed over again", order_id)
                self.hand_over(Record(events))
        while len(self.idle) < self.settings.order_actor_pool and self.pool_size < self.settings.order_actor_max:
            self.idle.append(self._new_order_actor())

    def receiveMsg_DeadEnvelope(self, message: DeadEnvelope, sender: Any) -> None:
        """Whoever handed something to an actor that has died meanwhile: it goes to the actor
        that replaced it, so nothing is dropped on the floor."""
        if self.stopping:
            return
        self._child_died(message.deadAddress)
        role = next((role for address, role in self.retired if address == message.deadAddress), None)
        letter = message.deadMessage
        if role is None and not self.share.whole:
            return  # another partition's tree's letter: the coordinator tells every tree
        if isinstance(letter, Recorded):
            pass  # the recorder's answer to a process that died: its successor numbers its own
        elif role in ROLES:
            self.send(getattr(self.peers, role), letter)
        elif role == "order" and isinstance(letter, BrokerUpdate):
            self._revive(letter.order_id, letter.news)
        elif role == "order" and isinstance(letter, CancelOrder):
            self.receiveMsg_CancelOrder(letter, sender)
        elif role == "order" and isinstance(letter, ModifyOrder):
            self.receiveMsg_ModifyOrder(letter, sender)
        elif role == "order" and isinstance(letter, Assign):
            pass  # its order is being revived on another actor
        else:
            log.warning("undeliverable %s to %s", type(letter).__name__, message.deadAddress)

    # --- a partition handed over ------------------------------------------------------------------------

    def receiveMsg_Release(self, message: Release, sender: Any) -> None:
        """Hand the partition over (its readers have stopped: the coordinator fenced the lease):
        what is held is flushed, then Drained."""
        log.warning("handing %s over: held writes are flushed", self.share)
        self.receiveMsg_Drain(Drain(), sender)

    # --- shutdown -------------------------------------------------------------------------------------

    def receiveMsg_Drain(self, message: Drain, sender: Any) -> None:
        """Flushed means: in ClickHouse, confirmed by the archive and the status subjects, and
        applied by the position keeper."""
        self.drain_asker = sender
        self.send(self.peers.recorder, Drain())

    def receiveMsg_Drained(self, message: Drained, sender: Any) -> None:
        if self.drain_asker is not None:
            self.send(self.drain_asker, Drained("service"))
            self.drain_asker = None

    def receiveMsg_ActorExitRequest(self, message: ActorExitRequest, sender: Any) -> None:
        self.stopping = True


def _peer_fields(peers: Peers) -> dict[str, Any]:
    return {name: getattr(peers, name) for name in peers.__struct_fields__}
