"""The approved trading signal, as risk-management publishes it on ``signals.approved.{symbol}``.

Decoding (messages.codec.decode) checks the shape and types; ``check_executable`` then
checks the meaning. Only a signal that passes both ever becomes an order.
"""

from __future__ import annotations

import uuid
from datetime import datetime

import msgspec

from messages.enums import ApprovalStatus, OrderType, SignalType, TimeInForce
from messages.symbols import SymbolSpec


class TradingSignal(msgspec.Struct, frozen=True, kw_only=True):
    """One row of upstream's ``trading_signals``. Unknown fields are ignored."""

    signal_id: uuid.UUID
    symbol: str
    signal_type: SignalType
    risk_approval_status: ApprovalStatus
    position_size_recommended: float | None = None
    # Some risk-management examples name the size this way.
    position_size: float | None = None
    entry_price: float | None = None
    stop_loss: float | None = None
    take_profit: float | None = None
    timeframe: str = ""
    signal_timestamp: datetime | None = None
    created_at: datetime | None = None
    model_version: str = ""
    confidence_score: float | None = None
    # Optional execution instructions; configured defaults apply when absent.
    order_type: OrderType | None = None
    limit_price: float | None = None
    stop_price: float | None = None
    time_in_force: TimeInForce | None = None
    expires_at: datetime | None = None

    @property
    def volume(self) -> float | None:
        return self.position_size_recommended if self.position_size_recommended is not None else self.position_size

    @property
    def expected_price(self) -> float | None:
        """What slippage is measured against: the entry price, else the order's own trigger price."""
        return self.entry_price or self.limit_price or self.stop_price


class SignalRefused(ValueError):
    """A well-formed signal that must not be executed, with a stable reason code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def check_executable(
    signal: TradingSignal,
    subject_symbol: str | None,
    symbols: dict[str, SymbolSpec],
) -> None:
    """Raise SignalRefused unless the signal may be executed."""
    if signal.risk_approval_status is not ApprovalStatus.APPROVED:
        raise SignalRefused("not_approved", f"risk_approval_status is {signal.risk_approval_status.value}")
    if signal.signal_type is SignalType.HOLD:
        raise SignalRefused("hold_signal", "a hold signal is not executable")
    if subject_symbol is not None and subject_symbol != signal.symbol:
        raise SignalRefused("symbol_mismatch", f"subject says {subject_symbol}, payload says {signal.symbol}")
    spec = symbols.get(signal.symbol)
    if spec is None:
        raise SignalRefused("unknown_symbol", f"{signal.symbol} is not a traded symbol")
    for name in ("entry_price", "stop_loss", "take_profit", "limit_price", "stop_price"):
        value = getattr(signal, name)
        if value is not None and value <= 0:
            raise SignalRefused("non_positive_price", f"{name} {value} must be positive")
    if signal.expected_price is None:
        raise SignalRefused("missing_price", "entry_price is required: slippage is measured against it")
    if signal.signal_type in (SignalType.CLOSE_LONG, SignalType.CLOSE_SHORT):
        return
    volume = signal.volume
    if volume is None:
        raise SignalRefused("missing_volume", "position_size_recommended is required")
    if volume <= 0:
        raise SignalRefused("non_positive_volume", f"volume {volume} must be positive")
    if not spec.volume_is_valid(volume):
        raise SignalRefused(
            "invalid_volume",
            f"volume {volume} outside {spec.volume_min}..{spec.volume_max} step {spec.volume_step}",
        )
    order_type = signal.order_type
    if order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) and not (signal.limit_price or signal.entry_price):
        raise SignalRefused("missing_price", f"a {order_type.value} order needs limit_price or entry_price")
    if order_type in (OrderType.STOP, OrderType.STOP_LIMIT) and not (signal.stop_price or signal.entry_price):
        raise SignalRefused("missing_price", f"a {order_type.value} order needs stop_price or entry_price")
    if signal.time_in_force is TimeInForce.GTD and signal.expires_at is None:
        raise SignalRefused("missing_expiry", "a GTD order needs expires_at")
