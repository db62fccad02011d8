"""Enumerations shared by the wire messages and the ClickHouse enums (same names, same order)."""

from __future__ import annotations

from enum import Enum, IntEnum


class OrderStatus(str, Enum):
    """ClickHouse Enum8(pending=1, ..., failed=7): the order lifecycle."""

    PENDING = "pending"
    SUBMITTED = "submitted"
    PARTIALLY_FILLED = "partially_filled"
    FILLED = "filled"
    CANCELLED = "cancelled"
    REJECTED = "rejected"
    FAILED = "failed"


class Phase(str, Enum):
    """Where an order is in the real world: the model's state, finer than the public status
    (model.order.public_status maps one onto the other)."""

    NEW = "new"  # created here, not sent yet
    SENT = "sent"  # the request is out: no answer yet, or some deals and the rest to come
    # The connector answered 10012 (timeout) or 10031 (no connection): the request may or may
    # not have been executed. Only the broker's order status tells; it is never assumed rejected.
    OUTCOME_UNKNOWN = "outcome_unknown"
    WORKING = "working"  # accepted and resting at the broker (10008)
    TRIGGERED = "triggered"  # a stop-limit whose stop was reached: its limit order works now
    PENDING_CANCEL = "pending_cancel"  # a cancel is on its way; fills may still come before it
    FILLED = "filled"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    REJECTED = "rejected"
    FAILED = "failed"  # never executed, as far as the broker could say


class OrderType(str, Enum):
    MARKET = "market"
    LIMIT = "limit"
    STOP = "stop"
    STOP_LIMIT = "stop_limit"


class Side(str, Enum):
    BUY = "buy"
    SELL = "sell"

    @property
    def sign(self) -> int:
        """+1 for buy, -1 for sell: a buy pays more when the price rises."""
        return 1 if self is Side.BUY else -1

    @property
    def opposite(self) -> Side:
        return Side.SELL if self is Side.BUY else Side.BUY


class SignalType(str, Enum):
    BUY = "buy"
    SELL = "sell"
    CLOSE_LONG = "close_long"
    CLOSE_SHORT = "close_short"
    HOLD = "hold"


class ApprovalStatus(str, Enum):
    APPROVED = "approved"
    PENDING = "pending"
    REJECTED = "rejected"


class TimeInForce(str, Enum):
    GTC = "GTC"
    DAY = "DAY"
    GTD = "GTD"


class PositionSide(str, Enum):
    LONG = "long"
    SHORT = "short"


class PositionStatus(str, Enum):
    OPEN = "open"
    CLOSED = "closed"


class ExitReason(str, Enum):
    TAKE_PROFIT = "take_profit"
    STOP_LOSS = "stop_loss"
    MANUAL = "manual"
    SIGNAL = "signal"


class TradeAction(str, Enum):
    """MT5 TRADE_ACTION_*: a deal executes now, a pending order rests until triggered."""

    DEAL = "deal"
    PENDING = "pending"


class Mt5OrderType(str, Enum):
    """MT5 ORDER_TYPE_*."""

    BUY = "buy"
    SELL = "sell"
    BUY_LIMIT = "buy_limit"
    SELL_LIMIT = "sell_limit"
    BUY_STOP = "buy_stop"
    SELL_STOP = "sell_stop"
    BUY_STOP_LIMIT = "buy_stop_limit"
    SELL_STOP_LIMIT = "sell_stop_limit"


class Filling(str, Enum):
    """MT5 ORDER_FILLING_*."""

    FOK = "FOK"
    IOC = "IOC"
    RETURN = "RETURN"


class Mt5TimeType(str, Enum):
    """MT5 ORDER_TIME_*."""

    GTC = "GTC"
    DAY = "DAY"
    SPECIFIED = "SPECIFIED"


class DealEntry(str, Enum):
    IN = "in"
    OUT = "out"


class DealReason(str, Enum):
    """Why a deal happened: our order, or the broker closing a position by SL, TP or stop-out."""

    CLIENT = "client"
    SL = "sl"
    TP = "tp"
    STOP_OUT = "stop_out"


class Retcode(IntEnum):
    """MT5 trade server return codes used by the contract."""

    REQUOTE = 10004
    REJECT = 10006
    CANCEL = 10007
    PLACED = 10008
    DONE = 10009
    DONE_PARTIAL = 10010
    ERROR = 10011
    TIMEOUT = 10012
    INVALID = 10013
    INVALID_VOLUME = 10014
    INVALID_PRICE = 10015
    INVALID_STOPS = 10016
    MARKET_CLOSED = 10018
    NO_MONEY = 10019
    PRICE_CHANGED = 10020
    PRICE_OFF = 10021
    INVALID_EXPIRATION = 10022
    ORDER_CHANGED = 10023
    # A modify that changes nothing: also what a resend finds when the first one was applied.
    NO_CHANGES = 10025
    INVALID_FILL = 10030
    CONNECTION = 10031
    POSITION_CLOSED = 10036
