"""Pre-trade checks: what must be true of a signal before anything of it reaches the broker.

Pure: the signal, its symbol, the last quote, the limits and the clock go in; out comes
nothing, or a SignalRefused naming the reason (a stable code) and what to fix. Ingress runs
``check_signal`` on every signal: ``check_content`` (the signal itself) and ``check_market``
(the signal against the quote and the clock, which a signal seen again may no longer pass).
The checks that need the positions and the open orders (exposure, closes) are
``model.exposure``'s, run by the supervisor. ``check_change`` holds an
operator's modify to the same rules before it goes to the broker.
"""

from __future__ import annotations

import math

from datetime import datetime, timedelta

import msgspec

from messages.broker import BrokerQuote
from messages.enums import ApprovalStatus, OrderStatus, OrderType, Side, SignalType, TimeInForce
from messages.order import Order, OrderChange, changed_fields
from messages.signal import SignalRefused, TradingSignal
from messages.symbols import SymbolSpec


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """The configured limits (service.config.Settings has their defaults)."""

    # Entry, limit and stop prices further than this from the last quote's mid are refused.
    price_band_pct: float
    # Lots per order, whatever the symbol would allow.
    max_order_volume: float
    # Lots open per symbol (positions plus working orders that open), long and short together.
    max_symbol_exposure: float
    # A GTD order must have at least this long to live.
    min_expiry_s: float


def check_signal(
    signal: TradingSignal,
    subject_symbol: str | None,
    symbols: dict[str, SymbolSpec],
    quote: BrokerQuote | None,
    limits: Limits,
    now: datetime,
) -> None:
    """Raise SignalRefused unless the signal may be executed. ``quote`` is the latest known
    for the signal's symbol; None refuses (nothing is checked against an unknown market)."""
    check_content(signal, subject_symbol, symbols, limits)
    check_market(signal, quote, limits, now)


def check_content(signal: TradingSignal, subject_symbol: str | None, symbols: dict[str, SymbolSpec], limits: Limits) -> None:
    """What the signal itself must be, whenever it is looked at: approved, executable, on its
    own subject, for a traded symbol, with the prices and the volume it needs."""
    if signal.risk_approval_status is None:
        raise SignalRefused("not_approved", "risk_approval_status is missing: only a signal that says 'approved' is executed")
    if signal.risk_approval_status is not ApprovalStatus.APPROVED:
        raise SignalRefused("not_approved", f"risk_approval_status is {signal.risk_approval_status.value}")
    if signal.signal_type is SignalType.HOLD:
        raise SignalRefused("hold_signal", "a hold signal is not executable")
    if subject_symbol is None:
        raise SignalRefused("missing_subject_symbol", f"publish on signals.approved.{signal.symbol}, not on signals.approved")
    if subject_symbol != signal.symbol:
        raise SignalRefused("symbol_mismatch", f"subject says {subject_symbol}, payload says {signal.symbol}")
    spec = symbols.get(signal.symbol)
    if spec is None:
        raise SignalRefused("unknown_symbol", f"{signal.symbol} is not traded; traded: {', '.join(sorted(symbols))}")
    for name in ("entry_price", "stop_loss", "take_profit", "limit_price", "stop_price"):
        value = getattr(signal, name)
        if value is not None and value <= 0:
            raise SignalRefused("non_positive_price", f"{name} {value} must be positive")
    if signal.expected_price is None:
        raise SignalRefused("missing_price", "entry_price is required: slippage is measured against it")
    _check_volume(signal, spec, limits)
    if signal.closes:
        return  # a close is a market order on an existing position: no order prices
    order_type = signal.order_type
    if order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT) and not (signal.limit_price or signal.entry_price):
        raise SignalRefused("missing_price", f"a {order_type.value} order needs limit_price or entry_price")
    if order_type in (OrderType.STOP, OrderType.STOP_LIMIT) and not (signal.stop_price or signal.entry_price):
        raise SignalRefused("missing_price", f"a {order_type.value} order needs stop_price or entry_price")


def check_market(signal: TradingSignal, quote: BrokerQuote | None, limits: Limits, now: datetime) -> None:
    """What the signal must be against the market and the clock at the moment it would go out:
    its prices near the quote, its stops on the right side, its expiry ahead, its session open."""
    if quote is None:
        raise SignalRefused("no_market_quote", f"no quote for {signal.symbol} from the connector: prices cannot be checked")
    _check_band(signal, quote, limits)
    if signal.closes:
        return  # a close is a market order on an existing position: no stops, no expiry
    _check_stops(signal, quote)
    _check_time_in_force(signal, quote, limits, now)


def _check_volume(signal: TradingSignal, spec: SymbolSpec, limits: Limits) -> None:
    volume = signal.volume
    if volume is None:
        if signal.closes:
            return  # no volume on a close: the whole position (see model.exposure)
        raise SignalRefused("missing_volume", "position_size_recommended is required")
    if volume <= 0:
        raise SignalRefused("non_positive_volume", f"volume {volume} must be positive")
    if volume > limits.max_order_volume:
        raise SignalRefused("order_volume_limit", f"volume {volume} lots is above the per-order limit of {limits.max_order_volume}")
    if not spec.volume_is_valid(volume):
        raise SignalRefused(
            "invalid_volume",
            f"volume {volume} outside {spec.volume_min}..{spec.volume_max} step {spec.volume_step}",
        )


def _check_band(signal: TradingSignal, quote: BrokerQuote, limits: Limits) -> None:
    """The fat-finger guard: no price the order would carry, and none slippage would be
    measured against, may be far from the market."""
    band = limits.price_band_pct / 100
    for name in ("entry_price", "limit_price", "stop_price"):
        value = getattr(signal, name)
        if value is not None and abs(value / quote.mid - 1) > band:
            raise SignalRefused(
                "price_out_of_band",
                f"{name} {value} is more than {limits.price_band_pct}% from the market ({quote.bid}/{quote.ask})",
            )


def _entry_of(signal: TradingSignal) -> float:
    """The price the position would be opened at: what its stops must bracket."""
    if signal.order_type in (OrderType.LIMIT, OrderType.STOP_LIMIT):
        return signal.limit_price or signal.entry_price or 0.0
    if signal.order_type is OrderType.STOP:
        return signal.stop_price or signal.entry_price or 0.0
    return signal.entry_price or 0.0


def _check_stops(signal: TradingSignal, quote: BrokerQuote) -> None:
    """A buy's stop-loss below and take-profit above its entry, a sell's the other way round;
    a market order's also on the right side of the price its position would close at now
    (a buy closes at the bid, a sell at the ask), as MT5 requires (retcode 10016)."""
    side = Side.BUY if signal.signal_type is SignalType.BUY else Side.SELL
    references = [("entry", _entry_of(signal))]
    if signal.order_type in (None, OrderType.MARKET):
        references.append(("market", quote.bid if side is Side.BUY else quote.ask))
    for label, reference in references:
        if signal.stop_loss is not None and (signal.stop_loss - reference) * side.sign >= 0:
            where = "below" if side is Side.BUY else "above"
            raise SignalRefused("invalid_stops", f"a {side.value}'s stop_loss {signal.stop_loss} must be {where} the {label} price {reference}")
        if signal.take_profit is not None and (signal.take_profit - reference) * side.sign <= 0:
            where = "above" if side is Side.BUY else "below"
            raise SignalRefused("invalid_stops", f"a {side.value}'s take_profit {signal.take_profit} must be {where} the {label} price {reference}")


def _check_time_in_force(signal: TradingSignal, quote: BrokerQuote, limits: Limits, now: datetime) -> None:
    if signal.time_in_force is TimeInForce.GTD:
        expiry = signal.expiry
        if expiry is None:
            raise SignalRefused("missing_expiry", "a GTD order needs expires_at")
        if expiry <= now:
            raise SignalRefused("expiry_in_past", f"expires_at {expiry.isoformat()} is not in the future")
        if expiry < now + timedelta(seconds=limits.min_expiry_s):
            raise SignalRefused("expiry_too_close", f"expires_at {expiry.isoformat()} is less than {limits.min_expiry_s:g}s away")
    if signal.time_in_force is TimeInForce.DAY and not quote.trade_allowed:
        raise SignalRefused("market_closed", f"{signal.symbol}'s session is closed: a DAY order would have no day to work in")


def check_change(order: Order, change: OrderChange, quote: tuple[float, float] | None, limits: Limits, now: datetime) -> None:
    """Raise SignalRefused unless ``change`` (to a working order, or to the position a filled
    order opened) may go to the broker: its prices within the band of the last quote (bid,
    ask), the stops on the right side of the entry (of the market, for a position), the
    expiry far enough ahead. What only the broker knows (a limit on the wrong side of the
    market, a position closed meanwhile) the broker refuses, as for a new order."""
    filled = order.status is OrderStatus.FILLED
    if filled and (change.price, change.stoplimit, change.expiration) != (None, None, None):
        raise SignalRefused("position_takes_sl_tp", "the order is filled: only the SL/TP of the position it opened can change")
    for name in ("price", "stoplimit", "sl", "tp"):
        if (value := getattr(change, name)) is not None and not math.isfinite(value):
            raise SignalRefused("price_out_of_band", f"{name} {value} is not a finite price")
    for name in ("price", "stoplimit"):
        if (value := getattr(change, name)) is not None and value <= 0:
            raise SignalRefused("non_positive_price", f"{name} {value} must be positive")
    for name in ("sl", "tp"):
        if (value := getattr(change, name)) is not None and value < 0:
            raise SignalRefused("non_positive_price", f"{name} {value} must be positive (0 removes it)")
    if quote is None:
        raise SignalRefused("no_market_quote", f"no quote for {order.symbol} from the connector: prices cannot be checked")
    bid, ask = quote
    band = limits.price_band_pct / 100
    for name in ("price", "stoplimit"):
        if (value := getattr(change, name)) is not None and abs(value / ((bid + ask) / 2) - 1) > band:
            raise SignalRefused("price_out_of_band", f"{name} {value} is more than {limits.price_band_pct}% from the market ({bid}/{ask})")
    after = msgspec.structs.replace(order, **changed_fields(order, change))
    if filled:  # a position's stops bracket the price it would close at now (a buy closes at the bid)
        label, reference = "market", bid if order.side is Side.BUY else ask
    else:
        label, reference = "entry", (after.stop_price if order.order_type is OrderType.STOP else after.price) or 0.0
    sign = order.side.sign
    if after.stop_loss is not None and (after.stop_loss - reference) * sign >= 0:
        where = "below" if order.side is Side.BUY else "above"
        raise SignalRefused("invalid_stops", f"a {order.side.value}'s stop_loss {after.stop_loss} must be {where} the {label} price {reference}")
    if after.take_profit is not None and (after.take_profit - reference) * sign <= 0:
        where = "above" if order.side is Side.BUY else "below"
        raise SignalRefused("invalid_stops", f"a {order.side.value}'s take_profit {after.take_profit} must be {where} the {label} price {reference}")
    if change.expiration is not None and change.expiration < now + timedelta(seconds=limits.min_expiry_s):
        raise SignalRefused("expiry_too_close", f"expires_at {change.expiration.isoformat()} is less than {limits.min_expiry_s:g}s away")
