"""The order, its fills and its lifecycle events.

An ``Order`` is an immutable snapshot; every change is an ``OrderEvent`` carrying the
snapshot after it. The event stream is the order's history: ClickHouse keeps the latest
snapshot per order (ReplacingMergeTree on ``version``), the Kafka archive keeps every event.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum

import msgspec

from messages.enums import (
    DealEntry,
    DealReason,
    OrderStatus,
    OrderType,
    Phase,
    Side,
    TimeInForce,
)

# Namespaces for the ids derived deterministically, so a replay derives the same ids again.
ORDER_NAMESPACE = uuid.UUID("6c3f0f6e-8f0b-4c64-a9a6-0e6d2b7a1f01")
EXECUTION_NAMESPACE = uuid.UUID("6c3f0f6e-8f0b-4c64-a9a6-0e6d2b7a1f02")
SIGNAL_ALERT_SUBJECT = "signals.alert"


def order_id_for(signal_id: uuid.UUID) -> uuid.UUID:
    """The one order a signal can ever give: the same signal always names the same order."""
    return uuid.uuid5(ORDER_NAMESPACE, str(signal_id))


def execution_id_for(deal: int) -> uuid.UUID:
    """Broker deal numbers are unique per account, so a deal recorded twice is one row."""
    return uuid.uuid5(EXECUTION_NAMESPACE, str(deal))


class Fill(msgspec.Struct, frozen=True, kw_only=True):
    """One broker deal, as recorded in ``executions``.

    Slippage is signed so that positive is adverse: a buy filled above, or a sell filled
    below, the expected price.
    """

    execution_id: uuid.UUID
    order_id: uuid.UUID | None
    deal: int
    ticket: int
    position_ticket: int
    symbol: str
    side: Side
    fill_price: float
    fill_quantity: float
    expected_price: float | None
    slippage: float | None
    slippage_pips: float | None
    commission: float
    swap: float
    entry: DealEntry
    reason: DealReason
    execution_timestamp: datetime


class OrderChange(msgspec.Struct, frozen=True, kw_only=True):
    """An operator's change to a working order, or to the SL/TP of the position a filled order
    opened, in MT5's terms (TRADE_ACTION_MODIFY / SLTP): ``price`` is a limit's limit and a stop's
    or stop-limit's stop, ``stoplimit`` a stop-limit's limit; an ``sl`` or ``tp`` of 0 removes it.
    None leaves a field as it is. ``request_id`` names the request in its events."""

    request_id: uuid.UUID
    price: float | None = None
    stoplimit: float | None = None
    sl: float | None = None
    tp: float | None = None
    expiration: datetime | None = None


class Order(msgspec.Struct, frozen=True, kw_only=True):
    order_id: uuid.UUID
    signal_id: uuid.UUID
    symbol: str
    side: Side
    order_type: OrderType
    quantity: float
    # What slippage is measured against: the signal's entry price.
    expected_price: float
    created_at: datetime
    price: float | None = None
    stop_price: float | None = None
    stop_loss: float | None = None
    take_profit: float | None = None
    time_in_force: TimeInForce = TimeInForce.GTC
    expires_at: datetime | None = None
    timeframe: str = ""
    # A digest of the signal's content: a replay of the same signal_id with other content is
    # a conflict, not a duplicate (see messages.signal.fingerprint).
    signal_fingerprint: str = ""
    # close_long / close_short: the order closes one position, whose ticket the position
    # keeper names before submission.
    closes_position: bool = False
    close_position: int | None = None
    # The model's state (model.order); ``status`` is its public face.
    phase: Phase = Phase.NEW
    status: OrderStatus = OrderStatus.PENDING
    broker_order_id: str | None = None
    submitted_at: datetime | None = None
    filled_at: datetime | None = None
    cancelled_at: datetime | None = None
    filled_quantity: float = 0.0
    average_fill_price: float | None = None
    commission: float = 0.0
    rejection_reason: str | None = None
    error_message: str | None = None
    # Broker deals already applied: a repeated deal is recognised, never counted twice.
    deals: tuple[int, ...] = ()
    # A change sent (or about to be sent) to the broker and not answered yet: in the snapshot,
    # so a revived or recovered order carries it on.
    pending_modify: OrderChange | None = None
    # How often that change went to the broker (0: it waits for its quote check).
    modify_sends: int = 0
    # Status reports in a row in which the broker did not know the order.
    not_found: int = 0
    triggered_at: datetime | None = None
    actor_address: str = ""
    version: int = 0

    @property
    def remaining(self) -> float:
        return round(self.quantity - self.filled_quantity, 8)


class EventKind(str, Enum):
    CREATED = "created"
    SUBMITTED = "submitted"
    PLACED = "placed"
    PARTIAL_FILL = "partial_fill"
    FILL = "fill"
    REJECTED = "rejected"
    FAILED = "failed"
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    QUERIED = "queried"
    OUTCOME_UNKNOWN = "outcome_unknown"
    NOT_AT_BROKER = "not_at_broker"
    TRIGGERED = "triggered"
    CANCEL_REFUSED = "cancel_refused"
    MODIFY_REQUESTED = "modify_requested"
    MODIFY_SENT = "modify_sent"
    MODIFIED = "modified"
    MODIFY_REFUSED = "modify_refused"


def changed_fields(order: Order, change: OrderChange) -> dict[str, object]:
    """The order's fields once the broker has taken ``change`` (MT5's terms to the order's)."""
    fields: dict[str, object] = {}
    if change.price is not None:
        fields["stop_price" if order.order_type in (OrderType.STOP, OrderType.STOP_LIMIT) else "price"] = change.price
    if change.stoplimit is not None:
        fields["price"] = change.stoplimit
    if change.sl is not None:
        fields["stop_loss"] = change.sl or None
    if change.tp is not None:
        fields["take_profit"] = change.tp or None
    if change.expiration is not None:
        fields.update(expires_at=change.expiration, time_in_force=TimeInForce.GTD)  # as MT5 sets ORDER_TIME_SPECIFIED
    return fields


class OrderEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One step of an order's life; also the Kafka ``order_execution_archive`` record (key: order_id)."""

    event_id: str
    order_id: uuid.UUID
    seq: int
    kind: EventKind
    status: OrderStatus
    at: datetime
    actor_address: str
    order: Order
    fill: Fill | None = None
    # The change a modify event is about (the operator's request it answers).
    change: OrderChange | None = None
    detail: str | None = None


class OrderStatusMessage(msgspec.Struct, frozen=True, kw_only=True):
    """Published on ``orders.{status}.{symbol}`` for every status an order reaches."""

    order_id: uuid.UUID
    signal_id: uuid.UUID
    status: OrderStatus
    symbol: str
    side: Side
    order_type: OrderType
    quantity: float
    filled_quantity: float
    average_fill_price: float | None
    broker_order_id: str | None
    reason: str | None
    actor_address: str
    seq: int
    timestamp: datetime

    @classmethod
    def of(cls, event: OrderEvent) -> OrderStatusMessage:
        return cls.of_order(event.order, event.actor_address, event.at)

    @classmethod
    def of_order(cls, order: Order, actor_address: str, at: datetime) -> OrderStatusMessage:
        return cls(
            order_id=order.order_id,
            signal_id=order.signal_id,
            status=order.status,
            symbol=order.symbol,
            side=order.side,
            order_type=order.order_type,
            quantity=order.quantity,
            filled_quantity=order.filled_quantity,
            average_fill_price=order.average_fill_price,
            broker_order_id=order.broker_order_id,
            reason=order.rejection_reason or order.error_message,
            actor_address=actor_address,
            seq=order.version,
            timestamp=at,
        )


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """Published on the dead-letter subject for every input the service refused.

    Bounded whatever arrived: ``payload`` is an excerpt (the whole of any normal signal); the
    full payload stays in the signals stream at ``stream_seq`` (``nats stream get``), and
    ``payload_sha256`` identifies it.
    """

    subject: str
    reason: str
    detail: str
    field: str | None
    payload: str
    payload_size: int
    payload_sha256: str
    payload_truncated: bool
    stream: str | None
    stream_seq: int | None
    deliveries: int
    signal_id: str | None
    received_at: datetime


class Alert(msgspec.Struct, frozen=True, kw_only=True):
    """Published on ``signals.alert`` for what an operator must look at (a conflicting replay)."""

    kind: str
    signal_id: str | None
    detail: str
    at: datetime
