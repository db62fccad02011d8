"""Messages the actors send one another (Thespian pickles them between processes).

Addresses are Thespian ActorAddress objects (typed ``Any``: they are opaque and not hashable).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import msgspec

from messages.broker import (
    BrokerCancelled,
    BrokerError,
    BrokerFill,
    BrokerOrderReport,
    BrokerPlaced,
    ModifyRequest,
    OrderRequest,
    PositionsReport,
    RequestResult,
)
from messages.control import ControlRecord, TradingHalt
from messages.order import Fill, Order, OrderChange, OrderEvent, OrderStatusMessage
from messages.position import Position, PositionAlert
from messages.signal import TradingSignal
from service.config import Settings
from service.partitions import EVERYTHING, Share



class ModifyResult(msgspec.Struct, frozen=True):
    """The connector's answer to a modify: a RequestResult, told apart from a cancel's."""

    result: RequestResult


BrokerNews = BrokerFill | BrokerError | BrokerPlaced | BrokerCancelled | BrokerOrderReport | RequestResult | ModifyResult


class Peers(msgspec.Struct, frozen=True, kw_only=True):
    """Where each role lives; handed to every actor when it is configured."""

    supervisor: Any = None
    recorder: Any = None
    archiver: Any = None
    status_publisher: Any = None
    gateway: Any = None
    positions: Any = None
    ingress: Any = None


# --- wiring and lifecycle -------------------------------------------------------------


class Start(msgspec.Struct, frozen=True):
    settings: Settings
    # What this tree serves: one partition, or everything (a single instance).
    share: Share = EVERYTHING


class Started(msgspec.Struct, frozen=True):
    peers: Peers
    open_orders: int
    halt: TradingHalt | None = None


class NotStarted(msgspec.Struct, frozen=True):
    """The answer to Start when the service may not run as configured (the reason, one line)."""

    reason: str


class Configure(msgspec.Struct, frozen=True):
    settings: Settings
    peers: Peers
    share: Share = EVERYTHING


class Ready(msgspec.Struct, frozen=True):
    role: str


class Drain(msgspec.Struct, frozen=True):
    """Flush everything held, then answer Drained."""


class Drained(msgspec.Struct, frozen=True):
    role: str


class FindTree(msgspec.Struct, frozen=True):
    """To a coordinator: the supervisor of this partition's tree, if this instance serves it."""

    partition: int


class TreeFound(msgspec.Struct, frozen=True):
    partition: int
    supervisor: Any  # None: not served by this instance (or its tree is still starting)
    holder: str | None  # the instance holding its lease, as the last round saw it


class Release(msgspec.Struct, frozen=True):
    """To a partition's supervisor, once its readers are fenced off: flush what is held, answer
    Drained; the coordinator then stops the tree and hands the lease back."""


class Watch(msgspec.Struct, frozen=True):
    """To the watchdog: stop the actor system once this launcher process is gone."""

    launcher_pid: int
    launcher_started: int
    supervisor: Any


# --- signals --------------------------------------------------------------------------


class Backpressure(msgspec.Struct, frozen=True):
    """From the recorder to ingress: stop (or resume) taking signals."""

    on: bool
    reason: str


class SignalsReceived(msgspec.Struct, frozen=True):
    """Valid signals of one fetch from JetStream, in order (one message for many)."""

    signals: list[TradingSignal]
    # signal_id -> the broker's report: signals that came again whose order the broker has
    # already (a tree sent it and died before recording it), taken as the broker has it.
    at_broker: dict[uuid.UUID, BrokerOrderReport] = {}


class SignalSettled(msgspec.Struct, frozen=True):
    """The supervisor needs nothing more from this delivery (a duplicate): acknowledge it."""

    signal_id: uuid.UUID


class SignalDeclined(msgspec.Struct, frozen=True):
    """The supervisor will not execute this signal (exposure, close volume, a conflicting
    replay, or ``internal_error``): ingress dead-letters it with the reason, or, for an
    internal error, lets it come again a bounded number of times first."""

    signal_id: uuid.UUID
    reason: str
    detail: str


class SignalsDurable(msgspec.Struct, frozen=True):
    """These signals' orders are recorded in ClickHouse: their deliveries can be acknowledged."""

    signal_ids: list[uuid.UUID]


class CrossCheck(msgspec.Struct, frozen=True):
    signal_ids: list[uuid.UUID]


class CrossChecked(msgspec.Struct, frozen=True):
    asked: list[uuid.UUID]
    found: list[uuid.UUID]


# --- orders ---------------------------------------------------------------------------


class CancelOrder(msgspec.Struct, frozen=True):
    """An operator's (or the system's) cancellation of one order."""

    order_id: uuid.UUID
    reason: str


class CancelRequest(msgspec.Struct, frozen=True):
    """An operator's cancellation (order_id or signal_id), answered with CancelAnswer."""

    key: uuid.UUID
    reason: str


class CancelAnswer(msgspec.Struct, frozen=True):
    """Accepted: the order is open and its cancellation under way; else why not."""

    order_id: uuid.UUID
    accepted: bool
    reason: str


class ModifyOrder(msgspec.Struct, frozen=True):
    """An operator's change to one order (or to the position it opened)."""

    order_id: uuid.UUID
    change: OrderChange


class ModifyCommand(msgspec.Struct, frozen=True):
    """An operator's modify (order_id or signal_id), answered with ModifyAnswer."""

    key: uuid.UUID
    change: OrderChange


class ModifyAnswer(msgspec.Struct, frozen=True):
    """Accepted: the order's actor has the change (its outcome is a MODIFIED or MODIFY_REFUSED
    event naming the request); else why not."""

    order_id: uuid.UUID
    accepted: bool
    reason: str


class Assign(msgspec.Struct, frozen=True):
    """Make this order active on the receiving OrderActor. With ``reconcile`` the actor first
    asks the broker what happened (a revived order); ``news`` is broker news to apply,
    ``cancel`` a cancellation and ``modify`` a change to carry out."""

    order: Order
    reconcile: bool = False
    news: BrokerNews | None = None
    cancel: CancelOrder | None = None
    modify: ModifyOrder | None = None


class Released(msgspec.Struct, frozen=True):
    """The actor is done with the order for now: it is terminal or resting at the broker.
    ``unacknowledged``: its events the recorder has not acknowledged yet (actors/base.py)."""

    order: Order
    unacknowledged: list[OrderEvent] = msgspec.field(default_factory=list)


class Submit(msgspec.Struct, frozen=True):
    """Send the order request; a new order's pending status goes out just before it, so the
    statuses appear on NATS in lifecycle order."""

    request: OrderRequest
    pending: OrderStatusMessage | None = None
    # A new order's first request: when the order was created (the signal->broker latency).
    created_at: datetime | None = None


class Route(msgspec.Struct, frozen=True):
    """Broker news for this order goes to the sender from now on."""

    order_id: uuid.UUID


class BrokerUpdate(msgspec.Struct, frozen=True):
    order_id: uuid.UUID
    news: BrokerNews


class Orphan(msgspec.Struct, frozen=True):
    """Broker news for an order that no actor holds: the supervisor revives the order."""

    update: BrokerUpdate


class QueryBroker(msgspec.Struct, frozen=True):
    order_ids: list[uuid.UUID]


class CancelAtBroker(msgspec.Struct, frozen=True):
    order_id: uuid.UUID


class ModifyAtBroker(msgspec.Struct, frozen=True):
    request: ModifyRequest


# What is handed to the recorder carries ``ack``, a number of its sender's (0: none wanted),
# and ``reply_to``, the sender (a letter forwarded by the supervisor comes from it): the
# recorder answers ``Recorded`` once it is in the outbox, and the sender keeps it until then
# (RoleActor.hand_over), sending it again to a new recorder.


class Record(msgspec.Struct, frozen=True):
    events: list[OrderEvent]
    ack: int = 0
    reply_to: Any = None


class RecordDeals(msgspec.Struct, frozen=True):
    """Deals with no order of ours behind them (SL/TP closes), or refused by their order."""

    fills: list[Fill]
    ack: int = 0
    reply_to: Any = None


class RecordPositions(msgspec.Struct, frozen=True):
    positions: list[Position]
    ack: int = 0
    reply_to: Any = None


class Recorded(msgspec.Struct, frozen=True):
    """The recorder has these hand-overs (by their ``ack``) in its outbox: one answer per
    sender per ack window, however many it took in that window. ``parked``: hand-overs it holds
    back, not recorded yet, until their orders' events before them arrive (service/taken.py):
    not to be sent again for a later number, and like one, a sign that what the sender handed
    over before them was lost on the way."""

    acks: list[int]
    parked: list[int] = msgspec.field(default_factory=list)


class Publish(msgspec.Struct, frozen=True):
    """Recorded events, for the archive and the status subjects; confirmed with Delivered."""

    events: list[OrderEvent]
    batch_id: int


class Delivered(msgspec.Struct, frozen=True):
    """A sink has durably written batch ``batch_id``, or the position keeper has applied it."""

    role: str
    batch_id: int


class FillsRecorded(msgspec.Struct, frozen=True):
    """To the position keeper: recorded fill events, and MODIFIED events (new SL/TP), of the
    recorder's batch ``batch_id`` (confirmed with Delivered once applied)."""

    events: list[OrderEvent]
    orphan_fills: list[Fill]
    batch_id: int


class PublishAlert(msgspec.Struct, frozen=True):
    alert: PositionAlert


# --- recovery and reconciliation --------------------------------------------------------


class LoadState(msgspec.Struct, frozen=True):
    idempotency_window_hours: float
    # Open orders of these symbols only; the known signals are all of them (a replay under
    # another symbol is still a replay).
    share: Share = EVERYTHING


class StateLoaded(msgspec.Struct, frozen=True):
    # signal_id -> (order_id, signal fingerprint) within the idempotency window
    known_signals: dict[uuid.UUID, tuple[uuid.UUID, str]]
    open_orders: list[Order]
    # The trading control in force (a halt survives a restart); None: never changed.
    control: ControlRecord | None = None


class LoadFills(msgspec.Struct, frozen=True):
    pass


class FillsLoaded(msgspec.Struct, frozen=True):
    fills: list[tuple[Fill, float | None, float | None]]


class QueryPositions(msgspec.Struct, frozen=True):
    """Reconcile: the broker's positions, and with ``deals_since`` its deals since then."""

    deals_since: datetime | None = None


class PositionsReply(msgspec.Struct, frozen=True):
    report: PositionsReport
    deals: list[BrokerFill]


# --- tracing --------------------------------------------------------------------------


class ShowOrder(msgspec.Struct, frozen=True):
    """By order_id or signal_id."""

    key: uuid.UUID


class OrderDirectoryEntry(msgspec.Struct, frozen=True):
    order_id: uuid.UUID | None
    actor: Any
    actor_address: str
    active: bool
    order: Order | None


class GetPeers(msgspec.Struct, frozen=True):
    """Ask the supervisor where each role lives (answered with Peers)."""


class GetState(msgspec.Struct, frozen=True):
    order_id: uuid.UUID


class OrderState(msgspec.Struct, frozen=True):
    order: Order | None
    pid: int
    actor_address: str


class Rehydrate(msgspec.Struct, frozen=True):
    """Ask the recorder for an order's latest recorded snapshot, to revive it."""

    order_id: uuid.UUID
    news: BrokerNews | None = None


class Rehydrated(msgspec.Struct, frozen=True):
    order_id: uuid.UUID
    order: Order | None
    news: BrokerNews | None


class GetHistory(msgspec.Struct, frozen=True):
    order_id: uuid.UUID


class History(msgspec.Struct, frozen=True):
    order_id: uuid.UUID
    events: list[OrderEvent]


class Query(msgspec.Struct, frozen=True):
    """A read-only SQL query, run by the recorder (the one process that holds embedded chdb)."""

    sql: str
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)


class QueryResult(msgspec.Struct, frozen=True):
    columns: list[str]
    rows: list[tuple[Any, ...]]
    error: str | None = None


class GetPositions(msgspec.Struct, frozen=True):
    pass


class PositionsSnapshot(msgspec.Struct, frozen=True):
    positions: list[Position]


class Ping(msgspec.Struct, frozen=True):
    """Answered by every actor with Pong: which role, which process, doing what."""


class Pong(msgspec.Struct, frozen=True):
    role: str
    pid: int
    address: str
    doing: str = ""
    # Messages sent since the actor started, by type.
    sent: dict[str, int] = msgspec.field(default_factory=dict)


class GetDirectory(msgspec.Struct, frozen=True):
    """Ask the supervisor for every actor it runs (answered with Directory)."""


class Directory(msgspec.Struct, frozen=True):
    peers: Peers
    order_actors: list[Any]


class StoreOutage(msgspec.Struct, frozen=True):
    """Fault injection: the recorder detaches the lifecycle table for ``seconds``, so every
    write to ClickHouse fails with ClickHouse's own error until it is attached again."""

    seconds: float


class FailSignal(msgspec.Struct, frozen=True):
    """Fault injection: ingress fails unexpectedly on the next ``times`` deliveries of this
    signal, as a bug would (what a handler that raises must not do to intake)."""

    signal_id: uuid.UUID
    times: int
