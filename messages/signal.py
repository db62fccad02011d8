"""The approved trading signal, as risk-management publishes it on ``signals.approved.{symbol}``.

Decoding (``parse_signal``) checks the shape and types; ``model.pretrade.check_signal`` then
checks the meaning against the market. Only a signal that passes both ever becomes an order.

What is accepted from upstream's own documented examples (README, "The signal contract"):
- times as RFC 3339 strings or as epoch numbers (seconds, or milliseconds when the number is
  too large to be seconds); ``timestamp_ms`` (inference's name) stands for ``signal_timestamp``;
- ``position_size`` for ``position_size_recommended``; unknown fields are ignored;
- not accepted: a signal_id that is not a UUID (``trading_signals.signal_id`` is one, and the
  order must join back to it) and a missing ``risk_approval_status`` (only a payload that says
  ``approved`` is executed, whatever subject it came on).
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime

import msgspec

from messages.codec import ContractError, decode, encode
from messages.enums import ApprovalStatus, OrderType, SignalType, TimeInForce

# A signal is well under a kilobyte; anything this large is refused before it is parsed.
MAX_SIGNAL_BYTES = 64 * 1024
# Epoch numbers above this are milliseconds (as seconds it would be the year 5138).
_EPOCH_MS_ABOVE = 100_000_000_000

Moment = datetime | float


class TradingSignal(msgspec.Struct, frozen=True, kw_only=True):
    """One row of upstream's ``trading_signals``. Unknown fields are ignored."""

    signal_id: uuid.UUID
    symbol: str
    signal_type: SignalType
    # Optional only so that its absence is refused with a reason that says so.
    risk_approval_status: ApprovalStatus | None = None
    position_size_recommended: float | None = None
    # Some risk-management examples name the size this way.
    position_size: float | None = None
    entry_price: float | None = None
    stop_loss: float | None = None
    take_profit: float | None = None
    timeframe: str = ""
    signal_timestamp: Moment | None = None
    timestamp_ms: float | None = None
    created_at: Moment | None = None
    model_version: str = ""
    confidence_score: float | None = None
    # Optional execution instructions; configured defaults apply when absent.
    order_type: OrderType | None = None
    limit_price: float | None = None
    stop_price: float | None = None
    time_in_force: TimeInForce | None = None
    expires_at: Moment | None = None

    @property
    def volume(self) -> float | None:
        return self.position_size_recommended if self.position_size_recommended is not None else self.position_size

    @property
    def expected_price(self) -> float | None:
        """What slippage is measured against: the entry price, else the order's own trigger price."""
        return self.entry_price or self.limit_price or self.stop_price

    @property
    def closes(self) -> bool:
        return self.signal_type in (SignalType.CLOSE_LONG, SignalType.CLOSE_SHORT)

    @property
    def expiry(self) -> datetime | None:
        return as_datetime(self.expires_at, "expires_at")

    @property
    def signalled_at(self) -> datetime | None:
        if self.signal_timestamp is None and self.timestamp_ms is not None:
            return as_datetime(self.timestamp_ms, "timestamp_ms", milliseconds=True)
        return as_datetime(self.signal_timestamp, "signal_timestamp")


class SignalRefused(ValueError):
    """A signal that must not be executed, with a stable reason code and what to fix."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def as_datetime(value: Moment | None, name: str, milliseconds: bool = False) -> datetime | None:
    """A time as given (RFC 3339, or epoch seconds or milliseconds), in UTC."""
    if value is None or isinstance(value, datetime):
        return value if value is None or value.tzinfo is not None else value.replace(tzinfo=UTC)
    seconds = value / 1000 if milliseconds or abs(value) > _EPOCH_MS_ABOVE else value
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        raise SignalRefused("invalid_timestamp", f"{name} {value} is not a time (RFC 3339 or epoch seconds/milliseconds)") from None


def parse_signal(data: bytes) -> TradingSignal:
    """Decode a signal strictly; raise ContractError or SignalRefused with a precise reason."""
    if len(data) > MAX_SIGNAL_BYTES:
        raise SignalRefused("payload_too_large", f"{len(data)} bytes; a signal is at most {MAX_SIGNAL_BYTES}")
    try:
        signal = decode(data, TradingSignal)
    except ContractError as error:
        if error.field == "signal_id":
            raise SignalRefused("invalid_signal_id", f"signal_id must be a UUID, as trading_signals.signal_id is ({error.detail})") from None
        raise
    except RecursionError:
        # msgspec gives up on deep nesting (in a field we would ignore, too) by raising this.
        raise ContractError("malformed_json", "JSON nested too deeply") from None
    # Every time is read once here, so a bad one is refused now rather than where it is used.
    for value, name in ((signal.created_at, "created_at"), (signal.signal_timestamp, "signal_timestamp"), (signal.expires_at, "expires_at")):
        as_datetime(value, name)
    if signal.timestamp_ms is not None:
        as_datetime(signal.timestamp_ms, "timestamp_ms", milliseconds=True)
    return signal


def fingerprint(signal: TradingSignal) -> str:
    """A digest of what the signal says (the fields the service reads, canonically encoded):
    the same signal_id with another fingerprint is a conflict, not a replay."""
    return hashlib.sha256(encode(signal)).hexdigest()[:32]
