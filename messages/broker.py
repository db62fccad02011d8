"""The contract with mt5-connector (the real one and the project's simulator).

Streams (durable, JetStream):
- ``orders.submitted.{symbol}``: ``OrderRequest``, the submitted status message that is
  also the order request; its Nats-Msg-Id is the order_id, so a resend is dropped.
- ``broker.fill.{symbol}``: ``BrokerFill``, one per deal (our orders' and SL/TP/stop-out closes).
- ``broker.error.{symbol}``: ``BrokerError``, an order the broker refused or failed.
- ``broker.placed.{symbol}``: ``BrokerPlaced``, a pending order resting at the broker (10008).
- ``broker.cancelled.{symbol}``: ``BrokerCancelled``, a pending order cancelled or expired.

Requests (core NATS request/reply), the project's additions:
- ``mt5.cancel``: ``CancelRequest`` -> ``RequestResult``
- ``mt5.modify``: ``ModifyRequest`` -> ``RequestResult``
- ``mt5.order_status``: ``OrderStatusQuery`` -> ``OrderStatusReport``
- ``mt5.positions``: ``PositionsQuery`` -> ``PositionsReport``
- ``mt5.deals``: ``DealsQuery`` -> ``DealsReport`` (MT5's history_deals_get): every deal in a
  time range, so a fill message that never arrived (an SL/TP close included) is still found.
- ``mt5.quotes``: ``QuotesQuery`` -> ``QuotesReport`` (MT5's symbol_info_tick and the symbol's
  trade mode): the last quote of each symbol, and whether its session is open.

Quotes (core NATS, not stored: only the latest one matters):
- ``mt5.tick.{symbol}``: ``BrokerQuote``, whenever a symbol's quote changes. The service keeps
  the latest per symbol as the reference for its fat-finger and stop-level checks.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import Enum

import msgspec

from messages.enums import (
    DealEntry,
    DealReason,
    Filling,
    Mt5OrderType,
    Mt5TimeType,
    Retcode,
    Side,
    TradeAction,
)
from messages.order import OrderStatusMessage

CANCEL_SUBJECT = "mt5.cancel"
MODIFY_SUBJECT = "mt5.modify"
ORDER_STATUS_SUBJECT = "mt5.order_status"
POSITIONS_SUBJECT = "mt5.positions"
DEALS_SUBJECT = "mt5.deals"
QUOTES_SUBJECT = "mt5.quotes"
TICK_SUBJECT = "mt5.tick"


class OrderRequest(OrderStatusMessage, frozen=True, kw_only=True):
    """The fields of MT5's order_send, on the submitted status message."""

    action: TradeAction
    type: Mt5OrderType
    volume: float
    price: float | None = None
    stoplimit: float | None = None
    sl: float | None = None
    tp: float | None = None
    deviation: int = 20
    type_time: Mt5TimeType = Mt5TimeType.GTC
    expiration: datetime | None = None
    type_filling: Filling = Filling.RETURN
    magic: int = 0
    # MT5 keeps at most 31 characters; the order_id's hex without dashes is 32, so the
    # first 31 are kept and the full id travels in order_id.
    comment: str = ""
    # The position ticket an opposite deal closes (hedging accounts).
    position: int | None = None


class BrokerFill(msgspec.Struct, frozen=True, kw_only=True):
    order_id: uuid.UUID | None
    ticket: int
    deal: int
    symbol: str
    side: Side
    volume: float
    price: float
    timestamp: datetime
    # As MT5 reports it: a cost is negative.
    commission: float = 0.0
    swap: float = 0.0
    position: int = 0
    entry: DealEntry = DealEntry.IN
    reason: DealReason = DealReason.CLIENT


class BrokerError(msgspec.Struct, frozen=True, kw_only=True):
    order_id: uuid.UUID
    symbol: str
    retcode: int
    comment: str
    timestamp: datetime


class BrokerPlaced(msgspec.Struct, frozen=True, kw_only=True):
    order_id: uuid.UUID
    symbol: str
    ticket: int
    timestamp: datetime
    retcode: int = Retcode.PLACED


class CancelCause(str, Enum):
    CLIENT = "client"
    EXPIRED = "expired"
    # The broker cancelled what the market could not fill: the rest of an IOC order, or of a
    # close whose position was closed meanwhile (by its SL/TP). ``remaining`` says how much.
    UNFILLED = "unfilled"


class BrokerCancelled(msgspec.Struct, frozen=True, kw_only=True):
    order_id: uuid.UUID
    symbol: str
    ticket: int
    cause: CancelCause
    remaining: float
    timestamp: datetime


class CancelRequest(msgspec.Struct, frozen=True, kw_only=True):
    order_id: uuid.UUID


class ModifyRequest(msgspec.Struct, frozen=True, kw_only=True):
    order_id: uuid.UUID
    price: float | None = None
    stoplimit: float | None = None
    sl: float | None = None
    tp: float | None = None
    expiration: datetime | None = None


class RequestResult(msgspec.Struct, frozen=True, kw_only=True):
    order_id: uuid.UUID
    retcode: int
    comment: str


class BrokerOrderState(str, Enum):
    UNKNOWN = "unknown"
    PLACED = "placed"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"


class BrokerOrderReport(msgspec.Struct, frozen=True, kw_only=True):
    """The broker's whole truth about one order, deals included, for reconciliation."""

    order_id: uuid.UUID
    state: BrokerOrderState
    ticket: int = 0
    volume: float = 0.0
    filled_volume: float = 0.0
    retcode: int = 0
    comment: str = ""
    deals: list[BrokerFill] = msgspec.field(default_factory=list)
    # A placed stop-limit whose stop was reached: its limit order works now.
    triggered: bool = False


class OrderStatusQuery(msgspec.Struct, frozen=True, kw_only=True):
    order_ids: list[uuid.UUID]


class OrderStatusReport(msgspec.Struct, frozen=True, kw_only=True):
    orders: list[BrokerOrderReport]


class BrokerPosition(msgspec.Struct, frozen=True, kw_only=True):
    ticket: int
    symbol: str
    side: Side
    volume: float
    price_open: float
    price_current: float
    opened_at: datetime
    order_id: uuid.UUID | None = None
    sl: float | None = None
    tp: float | None = None
    profit: float = 0.0
    swap: float = 0.0


class PositionsQuery(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str | None = None


class PositionsReport(msgspec.Struct, frozen=True, kw_only=True):
    positions: list[BrokerPosition]
    balance: float = 0.0
    equity: float = 0.0
    margin: float = 0.0
    margin_free: float = 0.0


class DealsQuery(msgspec.Struct, frozen=True, kw_only=True):
    since: datetime
    until: datetime | None = None


class DealsReport(msgspec.Struct, frozen=True, kw_only=True):
    deals: list[BrokerFill]


class BrokerQuote(msgspec.Struct, frozen=True, kw_only=True):
    symbol: str
    bid: float
    ask: float
    time: datetime
    # False outside the symbol's trading session (MT5: trade mode disabled / market closed).
    trade_allowed: bool = True

    @property
    def mid(self) -> float:
        return (self.bid + self.ask) / 2


class QuotesQuery(msgspec.Struct, frozen=True, kw_only=True):
    # None: every symbol the connector trades.
    symbols: list[str] | None = None


class QuotesReport(msgspec.Struct, frozen=True, kw_only=True):
    quotes: list[BrokerQuote]
