"""The paper broker's rules: orders, pending orders, hedging positions and the account.

Pure and synchronous (no I/O, no clock of its own, no randomness): every method takes the
time it acts at and returns the broker events it produced, in the order they happened.
The connector publishes them; tests call the methods directly.

MT5 semantics kept: a market order walks the depth ladder within ``deviation`` points and
honours its filling policy (FOK all or nothing, IOC fill and cancel the rest, RETURN fill
and keep the rest working); a pending order rests until the price crosses it; hedging
positions are identified by the ticket of the order that opened them; SL/TP closes are
broker deals with no order of the client behind them.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime

import msgspec

from messages.broker import (
    BrokerCancelled,
    BrokerError,
    BrokerFill,
    BrokerOrderReport,
    BrokerOrderState,
    BrokerPlaced,
    BrokerPosition,
    CancelCause,
    DealsReport,
    ModifyRequest,
    OrderRequest,
    OrderStatusReport,
    PositionsReport,
    RequestResult,
)
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
from simulator.market import Market, Quote, Session, day_end

Event = BrokerFill | BrokerError | BrokerPlaced | BrokerCancelled

EPS = 1e-9
WORKING = frozenset({BrokerOrderState.PLACED, BrokerOrderState.PARTIALLY_FILLED})
LIMITS = frozenset({Mt5OrderType.BUY_LIMIT, Mt5OrderType.SELL_LIMIT})
STOPS = frozenset({Mt5OrderType.BUY_STOP, Mt5OrderType.SELL_STOP})
STOP_LIMITS = frozenset({Mt5OrderType.BUY_STOP_LIMIT, Mt5OrderType.SELL_STOP_LIMIT})
MARKET = frozenset({Mt5OrderType.BUY, Mt5OrderType.SELL})


def side_of(order_type: Mt5OrderType) -> Side:
    return Side.BUY if order_type.value.startswith("buy") else Side.SELL


class Rejected(Exception):
    """A request the broker refuses, with MT5's return code."""

    def __init__(self, retcode: int, comment: str) -> None:
        super().__init__(f"{int(retcode)} {comment}")
        self.retcode = retcode
        self.comment = comment


class BrokerConfig(msgspec.Struct, frozen=True, kw_only=True):
    balance: float = 100_000.0
    leverage: float = 100.0
    # Round turn per lot; half is charged on each deal, negative as MT5 reports it.
    commission_per_lot: float = 7.0
    day_length_s: float = 86_400.0
    # First order ticket and first deal number.
    ticket_base: int = 1


class OrderRecord(msgspec.Struct, kw_only=True):
    """Everything the broker knows about one order of the client."""

    request: OrderRequest
    ticket: int = 0
    state: BrokerOrderState = BrokerOrderState.UNKNOWN
    retcode: int = 0
    comment: str = ""
    # The worst price the order may still trade at; None trades at any price (a triggered stop).
    bound: float | None = None
    # False for a stop or stop-limit whose stop price has not been reached yet.
    triggered: bool = True
    expires_at: datetime | None = None
    filled: float = 0.0
    placed: BrokerPlaced | None = None
    deals: list[BrokerFill] = msgspec.field(default_factory=list)
    error: BrokerError | None = None
    cancelled: BrokerCancelled | None = None

    @property
    def remaining(self) -> float:
        return round(self.request.volume - self.filled, 8)

    def outcome(self) -> list[Event]:
        """What was published about this order, in order: replayed for a duplicate submission."""
        placed: list[Event] = [self.placed] if self.placed else []
        closing: list[Event] = [event for event in (self.error, self.cancelled) if event is not None]
        return [*placed, *self.deals, *closing]


class PositionRecord(msgspec.Struct, kw_only=True):
    ticket: int
    symbol: str
    side: Side
    volume: float
    # Volume-weighted over the deals that opened it.
    price_open: float
    opened_at: datetime
    order_id: uuid.UUID | None = None
    sl: float | None = None
    tp: float | None = None


class BookState(msgspec.Struct, kw_only=True):
    """The book as written to the state file."""

    next_ticket: int
    next_deal: int
    balance: float
    orders: list[OrderRecord]
    positions: list[PositionRecord]
    # Deals with no order of the client behind them (SL/TP closes); the others live in ``orders``.
    closes: list[BrokerFill] = msgspec.field(default_factory=list)
    # Order requests refused as unreadable (10013), by the order_id that could be read from them.
    refused: list[BrokerError] = msgspec.field(default_factory=list)


class _Exposure:
    """Per-symbol sums that make equity and margin O(symbols) instead of O(positions)."""

    __slots__ = ("volume", "cost")

    def __init__(self) -> None:
        self.volume = {Side.BUY: 0.0, Side.SELL: 0.0}
        self.cost = {Side.BUY: 0.0, Side.SELL: 0.0}

    def add(self, side: Side, lots: float, price: float) -> None:
        self.volume[side] += lots
        self.cost[side] += lots * price
        if self.volume[side] < EPS:
            self.volume[side] = self.cost[side] = 0.0

    def profit(self, quote: Quote, contract_size: float) -> float:
        longs = self.volume[Side.BUY] * quote.bid - self.cost[Side.BUY]
        shorts = self.cost[Side.SELL] - self.volume[Side.SELL] * quote.ask
        return (longs + shorts) * contract_size

    def margin(self, contract_size: float, leverage: float) -> float:
        return (self.cost[Side.BUY] + self.cost[Side.SELL]) * contract_size / leverage


class Book:
    def __init__(
        self,
        market: Market,
        config: BrokerConfig | None = None,
        *,
        session: Session | None = None,
        state: BookState | None = None,
    ) -> None:
        self.market = market
        self.config = config or BrokerConfig()
        self.session = session or Session()
        self.balance = self.config.balance
        self._next_ticket = self._next_deal = self.config.ticket_base
        self._orders: dict[uuid.UUID, OrderRecord] = {}
        # The orders that can still trade: resting pending orders and RETURN remainders.
        self._working: dict[uuid.UUID, OrderRecord] = {}
        self._positions: dict[int, PositionRecord] = {}
        # Every deal, in the order it happened (MT5's deal history); ``_closes`` are those of
        # them no order stands behind.
        self._deals: list[BrokerFill] = []
        self._closes: list[BrokerFill] = []
        self._refused: dict[uuid.UUID, BrokerError] = {}
        self._exposure = {symbol: _Exposure() for symbol in market.specs}
        if state is not None:
            self._restore(state)

    # --- the client's requests -------------------------------------------------------------

    def knows(self, order_id: uuid.UUID) -> bool:
        return order_id in self._orders or order_id in self._refused

    def submit(
        self, request: OrderRequest, now: datetime, injected: tuple[int, str] | None = None
    ) -> tuple[list[Event], bool]:
        """Execute or place an order; (events, True) for an order_id seen before, which is not executed again.

        ``injected`` is a rejection forced by the fault switches, applied to an otherwise valid order.
        """
        known = self._orders.get(request.order_id)
        if known is not None:
            return known.outcome(), True
        if (refused := self._refused.get(request.order_id)) is not None:
            return [refused], True
        record = OrderRecord(request=request)
        self._orders[request.order_id] = record
        try:
            self._validate(request, now)
            if injected is not None:
                raise Rejected(*injected)
            if request.action is TradeAction.PENDING:
                return self._place(record, now), False
            return self._execute(record, now), False
        except Rejected as exc:
            return [self._reject(record, exc, now)], False

    def refuse(self, order_id: uuid.UUID, symbol: str, comment: str, now: datetime) -> tuple[list[Event], bool]:
        """An order request that could not be read, except for its order_id: rejected 10013 and
        remembered as that order's outcome. (events, True) for an order_id seen before."""
        known = self._orders.get(order_id)
        if known is not None:
            return known.outcome(), True
        if (refused := self._refused.get(order_id)) is not None:
            return [refused], True
        error = BrokerError(order_id=order_id, symbol=symbol, retcode=Retcode.INVALID, comment=comment, timestamp=now)
        self._refused[order_id] = error
        return [error], False

    def cancel(self, order_id: uuid.UUID, now: datetime) -> tuple[RequestResult, list[Event]]:
        record = self._orders.get(order_id)
        if record is None:
            return RequestResult(order_id=order_id, retcode=Retcode.INVALID, comment="Invalid request: unknown order"), []
        if record.state in WORKING:
            event = self._cancel(record, CancelCause.CLIENT, now)
            return RequestResult(order_id=order_id, retcode=Retcode.DONE, comment="Request completed"), [event]
        if record.state in (BrokerOrderState.CANCELLED, BrokerOrderState.EXPIRED):
            # Idempotent: a cancel repeated after a lost reply learns that the order is gone.
            return RequestResult(order_id=order_id, retcode=Retcode.DONE, comment=f"Order already {record.state.value}"), []
        return RequestResult(order_id=order_id, retcode=Retcode.REJECT, comment=f"Request rejected: order is {record.state.value}"), []

    def modify(self, request: ModifyRequest, now: datetime) -> RequestResult:
        """Change a working pending order, or the SL/TP of the position an order opened (MT5's SLTP)."""
        record = self._orders.get(request.order_id)
        try:
            if record is None:
                raise Rejected(Retcode.INVALID, "Invalid request: unknown order")
            if record.request.action is TradeAction.PENDING and record.state in WORKING:
                self._modify_pending(record, request, now)
            elif record.filled > 0 and (position := self._positions.get(record.ticket)) is not None:
                self._modify_position(position, request)
            elif record.filled > 0:
                raise Rejected(Retcode.POSITION_CLOSED, f"Position {record.ticket} is closed")
            else:
                raise Rejected(Retcode.INVALID, f"Invalid request: order is {record.state.value}")
        except Rejected as exc:
            return RequestResult(order_id=request.order_id, retcode=exc.retcode, comment=exc.comment)
        return RequestResult(order_id=request.order_id, retcode=Retcode.DONE, comment="Request completed")

    # --- the market moving -----------------------------------------------------------------

    def on_quote(self, symbol: str, now: datetime) -> list[Event]:
        """After ``symbol``'s price changed: trigger and fill working orders, then SL/TP."""
        events: list[Event] = []
        for record in [r for r in self._working.values() if r.request.symbol == symbol]:
            try:
                events += self._advance(record, now)
            except Rejected as exc:
                events.append(self._reject(record, exc, now))
        events += self._hit_stops(symbol, now)
        return events

    def expire(self, now: datetime) -> list[Event]:
        due = [r for r in self._working.values() if r.expires_at is not None and r.expires_at <= now]
        return [self._cancel(record, CancelCause.EXPIRED, now) for record in due]

    # --- reports -------------------------------------------------------------------------

    def order_status(self, order_ids: Iterable[uuid.UUID]) -> OrderStatusReport:
        reports = []
        for order_id in order_ids:
            record = self._orders.get(order_id)
            if record is None:
                refused = self._refused.get(order_id)
                if refused is None:
                    reports.append(BrokerOrderReport(order_id=order_id, state=BrokerOrderState.UNKNOWN))
                else:
                    reports.append(
                        BrokerOrderReport(order_id=order_id, state=BrokerOrderState.REJECTED, retcode=refused.retcode, comment=refused.comment)
                    )
                continue
            reports.append(
                BrokerOrderReport(
                    order_id=order_id,
                    state=record.state,
                    ticket=record.ticket,
                    volume=record.request.volume,
                    filled_volume=record.filled,
                    retcode=record.retcode,
                    comment=record.comment,
                    deals=list(record.deals),
                    triggered=record.request.type in STOP_LIMITS and record.triggered and record.state in WORKING,
                )
            )
        return OrderStatusReport(orders=reports)

    def deals(self, since: datetime, until: datetime) -> DealsReport:
        """Every deal timed in [since, until], in the order they happened (MT5's history_deals_get):
        our orders' deals in and out, and the SL/TP closes no order stands behind."""
        return DealsReport(deals=[deal for deal in self._deals if since <= deal.timestamp <= until])

    def positions_report(self, symbol: str | None = None) -> PositionsReport:
        positions = []
        for position in self._positions.values():
            if symbol is not None and position.symbol != symbol:
                continue
            spec = self.market.specs[position.symbol]
            current = self.market.quote(position.symbol).closing(position.side)
            positions.append(
                BrokerPosition(
                    ticket=position.ticket,
                    symbol=position.symbol,
                    side=position.side,
                    volume=position.volume,
                    price_open=round(position.price_open, spec.digits + 3),
                    price_current=current,
                    opened_at=position.opened_at,
                    order_id=position.order_id,
                    sl=position.sl,
                    tp=position.tp,
                    profit=round(self._profit(position, current, position.volume), 2),
                )
            )
        equity, margin = self.equity_and_margin()
        return PositionsReport(
            positions=positions,
            balance=round(self.balance, 2),
            equity=round(equity, 2),
            margin=round(margin, 2),
            margin_free=round(equity - margin, 2),
        )

    def equity_and_margin(self) -> tuple[float, float]:
        profit = margin = 0.0
        for symbol, exposure in self._exposure.items():
            spec = self.market.specs[symbol]
            profit += self.market.to_account(exposure.profit(self.market.quote(symbol), spec.contract_size), symbol)
            margin += self.market.to_account(exposure.margin(spec.contract_size, self.config.leverage), symbol)
        return self.balance + profit, margin

    # --- planting a discrepancy (fault switch) ----------------------------------------------

    def adjust_position(self, ticket: int, volume: float) -> bool:
        """Set a position's volume without any deal (0 closes it silently): reconciliation must notice."""
        position = self._positions.get(ticket)
        if position is None:
            return False
        self._exposure[position.symbol].add(position.side, volume - position.volume, position.price_open)
        if volume <= EPS:
            del self._positions[ticket]
        else:
            position.volume = round(volume, 8)
        return True

    # --- persistence -----------------------------------------------------------------------

    def snapshot(self) -> BookState:
        return BookState(
            next_ticket=self._next_ticket,
            next_deal=self._next_deal,
            balance=self.balance,
            orders=list(self._orders.values()),
            positions=list(self._positions.values()),
            closes=list(self._closes),
            refused=list(self._refused.values()),
        )

    def _restore(self, state: BookState) -> None:
        self._next_ticket, self._next_deal, self.balance = state.next_ticket, state.next_deal, state.balance
        self._orders = {record.request.order_id: record for record in state.orders}
        self._working = {order_id: r for order_id, r in self._orders.items() if r.state in WORKING}
        for position in state.positions:
            self._positions[position.ticket] = position
            self._exposure[position.symbol].add(position.side, position.volume, position.price_open)
        self._closes = list(state.closes)
        self._deals = sorted([*(d for r in state.orders for d in r.deals), *self._closes], key=lambda deal: deal.deal)
        self._refused = {error.order_id: error for error in state.refused}

    # --- validation ------------------------------------------------------------------------

    def _validate(self, request: OrderRequest, now: datetime) -> None:
        """MT5's checks, in its order: request shape, session, volume, position, prices, stops."""
        spec = self.market.specs.get(request.symbol)
        if spec is None:
            raise Rejected(Retcode.INVALID, f"Invalid request: unknown symbol {request.symbol}")
        side = side_of(request.type)
        if side is not request.side:
            raise Rejected(Retcode.INVALID, f"Invalid request: side {request.side.value} contradicts type {request.type.value}")
        if (request.action is TradeAction.DEAL) != (request.type in MARKET):
            raise Rejected(Retcode.INVALID, f"Invalid request: action {request.action.value} cannot take type {request.type.value}")
        if request.action is TradeAction.PENDING:
            if request.price is None or request.price <= 0:
                raise Rejected(Retcode.INVALID, "Invalid request: a pending order needs a price")
            if request.type in STOP_LIMITS and (request.stoplimit is None or request.stoplimit <= 0):
                raise Rejected(Retcode.INVALID, "Invalid request: a stop-limit order needs stoplimit")
            if request.position is not None:
                raise Rejected(Retcode.INVALID, "Invalid request: a pending order cannot close a position")
        if not self.session.is_open(now):
            raise Rejected(Retcode.MARKET_CLOSED, "Market closed")
        if not spec.volume_is_valid(request.volume):
            raise Rejected(
                Retcode.INVALID_VOLUME,
                f"Invalid volume {request.volume}: {spec.volume_min}..{spec.volume_max} in steps of {spec.volume_step}",
            )
        quote = self.market.quote(request.symbol)
        if request.position is not None:
            self._validate_close(request)
        elif request.action is TradeAction.DEAL:
            _check_stops(side, request.sl, request.tp, quote.closing(side))
        else:
            _check_pending_prices(request.type, request.price or 0.0, request.stoplimit, quote)
            _check_stops(side, request.sl, request.tp, _entry_price(request))
            if request.type_time is Mt5TimeType.SPECIFIED and (request.expiration is None or request.expiration <= now):
                raise Rejected(Retcode.INVALID_EXPIRATION, f"Invalid expiration {request.expiration}")

    def _validate_close(self, request: OrderRequest) -> None:
        position = self._positions.get(request.position or 0)
        if position is None:
            raise Rejected(Retcode.POSITION_CLOSED, f"Position {request.position} is closed or unknown")
        if position.symbol != request.symbol:
            raise Rejected(Retcode.INVALID, f"Invalid request: position {position.ticket} is on {position.symbol}")
        if side_of(request.type) is position.side:
            raise Rejected(Retcode.INVALID, f"Invalid request: a {request.type.value} cannot close a {position.side.value} position")
        if request.volume > position.volume + EPS:
            raise Rejected(Retcode.INVALID_VOLUME, f"Invalid volume {request.volume}: position {position.ticket} holds {position.volume}")

    def _check_margin(self, request: OrderRequest, price: float, volume: float) -> None:
        spec = self.market.specs[request.symbol]
        required = self.market.to_account(volume * spec.contract_size * price / self.config.leverage, request.symbol)
        equity, margin = self.equity_and_margin()
        if required > equity - margin + EPS:
            raise Rejected(Retcode.NO_MONEY, f"No money: margin {required:.2f} needed, {equity - margin:.2f} free")

    # --- execution -------------------------------------------------------------------------

    def _place(self, record: OrderRecord, now: datetime) -> list[Event]:
        request = record.request
        self._check_margin(request, _entry_price(request), request.volume)
        record.ticket = self._new_ticket()
        record.triggered = request.type in LIMITS
        record.bound = _pending_bound(request)
        record.expires_at = self._expiry(request, now)
        record.state, record.retcode, record.comment = BrokerOrderState.PLACED, Retcode.PLACED, "Order placed"
        record.placed = BrokerPlaced(order_id=request.order_id, symbol=request.symbol, ticket=record.ticket, timestamp=now)
        self._working[request.order_id] = record
        return [record.placed]

    def _execute(self, record: OrderRecord, now: datetime) -> list[Event]:
        """A market order at this moment's price, at most ``deviation`` points worse than the reference."""
        request = record.request
        spec = self.market.specs[request.symbol]
        side = side_of(request.type)
        touch = self.market.quote(request.symbol).touch(side)
        reference = spec.round_price(request.price) if request.price else touch
        bound = spec.round_price(reference + side.sign * request.deviation * spec.point)
        if side.sign * (touch - bound) > EPS:
            raise Rejected(Retcode.REQUOTE, f"Requote: {touch} is more than {request.deviation} points from {reference}")
        if request.position is None:
            self._check_margin(request, touch, request.volume)
        record.ticket = self._new_ticket()
        record.bound = bound
        return self._match(record, now, first=True)

    def _advance(self, record: OrderRecord, now: datetime) -> list[Event]:
        """A working order on a new quote: a stop triggers when the price reaches it, then it matches."""
        if not record.triggered:
            request = record.request
            side = side_of(request.type)
            touch = self.market.quote(request.symbol).touch(side)
            if side.sign * (touch - (request.price or 0.0)) < -EPS:
                return []
            record.triggered = True
        return self._match(record, now, first=False)

    def _match(self, record: OrderRecord, now: datetime, *, first: bool) -> list[Event]:
        """Walk the depth ladder up to the order's bound and apply the filling policy."""
        request = record.request
        side = side_of(request.type)
        wanted = record.remaining
        position = None
        if request.position is not None:
            position = self._positions.get(request.position)
            if position is None:
                # Closed meanwhile (by its SL/TP or another close): nothing left to close.
                return [self._cancel(record, CancelCause.UNFILLED, now)]
            wanted = min(wanted, position.volume)
        takes: list[tuple[float, float]] = []
        available = 0.0
        for price, lots in self.market.levels(request.symbol, side):
            if available >= wanted - EPS or (record.bound is not None and side.sign * (price - record.bound) > EPS):
                break
            lots = round(min(lots, wanted - available), 8)
            takes.append((price, lots))
            available = round(available + lots, 8)
        policy = request.type_filling
        if policy is Filling.FOK and available < wanted - EPS:
            if first:
                raise Rejected(Retcode.INVALID_FILL, f"FOK: only {available} of {wanted} lots within the price bound")
            return []
        if not takes:
            return []
        if position is None and not first:
            self._check_margin(request, takes[0][0], available)
        events: list[Event] = []
        for price, lots in takes:
            fill = self._deal(
                order_id=request.order_id,
                ticket=record.ticket,
                symbol=request.symbol,
                side=side,
                lots=lots,
                price=price,
                now=now,
                reason=DealReason.CLIENT,
                position=position,
                sl=request.sl,
                tp=request.tp,
            )
            record.deals.append(fill)
            record.filled = round(record.filled + lots, 8)
            events.append(fill)
        if record.remaining <= EPS:
            record.state, record.retcode, record.comment = BrokerOrderState.FILLED, Retcode.DONE, "Request completed"
            self._working.pop(request.order_id, None)
        elif policy is Filling.IOC:
            events.append(self._cancel(record, CancelCause.UNFILLED, now))
        else:
            record.state, record.retcode = BrokerOrderState.PARTIALLY_FILLED, Retcode.DONE_PARTIAL
            record.comment = "Request completed partially"
            self._working[request.order_id] = record
        return events

    def _hit_stops(self, symbol: str, now: datetime) -> list[Event]:
        """Close every position of ``symbol`` whose SL or TP the closing price has reached."""
        quote = self.market.quote(symbol)
        events: list[Event] = []
        for position in [p for p in self._positions.values() if p.symbol == symbol and (p.sl or p.tp)]:
            price = quote.closing(position.side)
            sign = position.side.sign
            if position.sl is not None and sign * (price - position.sl) <= EPS:
                reason = DealReason.SL
            elif position.tp is not None and sign * (price - position.tp) >= -EPS:
                reason = DealReason.TP
            else:
                continue
            close = self._deal(
                order_id=None,
                ticket=self._new_ticket(),
                symbol=symbol,
                side=position.side.opposite,
                lots=position.volume,
                price=price,
                now=now,
                reason=reason,
                position=position,
            )
            self._closes.append(close)
            events.append(close)
        return events

    def _deal(
        self,
        *,
        order_id: uuid.UUID | None,
        ticket: int,
        symbol: str,
        side: Side,
        lots: float,
        price: float,
        now: datetime,
        reason: DealReason,
        position: PositionRecord | None,
        sl: float | None = None,
        tp: float | None = None,
    ) -> BrokerFill:
        """One deal: opens/adds to the position of ``ticket`` (entry in) or reduces ``position`` (entry out)."""
        commission = -round(self.config.commission_per_lot / 2 * lots, 2)
        if position is None:
            position = self._enter(ticket, order_id, symbol, side, lots, price, now, sl, tp)
            entry = DealEntry.IN
        else:
            self.balance += self._profit(position, price, lots)
            self._exposure[symbol].add(position.side, -lots, position.price_open)
            position.volume = round(position.volume - lots, 8)
            if position.volume <= EPS:
                del self._positions[position.ticket]
            entry = DealEntry.OUT
        self.balance = round(self.balance + commission, 2)
        fill = BrokerFill(
            order_id=order_id,
            ticket=ticket,
            deal=self._new_deal(),
            symbol=symbol,
            side=side,
            volume=lots,
            price=price,
            timestamp=now,
            commission=commission,
            position=position.ticket,
            entry=entry,
            reason=reason,
        )
        self._deals.append(fill)
        return fill

    def _enter(
        self,
        ticket: int,
        order_id: uuid.UUID | None,
        symbol: str,
        side: Side,
        lots: float,
        price: float,
        now: datetime,
        sl: float | None,
        tp: float | None,
    ) -> PositionRecord:
        # Hedging: the position is named by the ticket of the order that opened it; the deals
        # of one order (partial fills) all go to it.
        position = self._positions.get(ticket)
        if position is None:
            position = PositionRecord(
                ticket=ticket, symbol=symbol, side=side, volume=lots, price_open=price, opened_at=now, order_id=order_id, sl=sl or None, tp=tp or None
            )
            self._positions[ticket] = position
        else:
            total = position.volume + lots
            position.price_open = (position.price_open * position.volume + price * lots) / total
            position.volume = round(total, 8)
        self._exposure[symbol].add(side, lots, price)
        return position

    def _profit(self, position: PositionRecord, price: float, lots: float) -> float:
        spec = self.market.specs[position.symbol]
        return self.market.to_account((price - position.price_open) * position.side.sign * lots * spec.contract_size, position.symbol)

    def _reject(self, record: OrderRecord, exc: Rejected, now: datetime) -> BrokerError:
        request = record.request
        record.state, record.retcode, record.comment = BrokerOrderState.REJECTED, exc.retcode, exc.comment
        record.error = BrokerError(order_id=request.order_id, symbol=request.symbol, retcode=exc.retcode, comment=exc.comment, timestamp=now)
        self._working.pop(request.order_id, None)
        return record.error

    def _cancel(self, record: OrderRecord, cause: CancelCause, now: datetime) -> BrokerCancelled:
        request = record.request
        expired = cause is CancelCause.EXPIRED
        record.state = BrokerOrderState.EXPIRED if expired else BrokerOrderState.CANCELLED
        record.retcode = Retcode.CANCEL
        record.comment = {
            CancelCause.CLIENT: "Request canceled by trader",
            CancelCause.EXPIRED: "Order expired",
            CancelCause.UNFILLED: "Remainder canceled: no more volume within the price bound",
        }[cause]
        record.cancelled = BrokerCancelled(
            order_id=request.order_id, symbol=request.symbol, ticket=record.ticket, cause=cause, remaining=record.remaining, timestamp=now
        )
        self._working.pop(request.order_id, None)
        return record.cancelled

    # --- modification ----------------------------------------------------------------------

    def _modify_pending(self, record: OrderRecord, change: ModifyRequest, now: datetime) -> None:
        fields = {name: value for name in ("price", "stoplimit", "sl", "tp") if (value := getattr(change, name)) is not None}
        if change.expiration is not None:
            fields.update(expiration=change.expiration, type_time=Mt5TimeType.SPECIFIED)
        request = msgspec.structs.replace(record.request, **fields)
        quote = self.market.quote(request.symbol)
        if not record.triggered or request.type in LIMITS:
            _check_pending_prices(request.type, request.price or 0.0, request.stoplimit, quote)
        _check_stops(side_of(request.type), request.sl or None, request.tp or None, _entry_price(request))
        if request.type_time is Mt5TimeType.SPECIFIED and (request.expiration is None or request.expiration <= now):
            raise Rejected(Retcode.INVALID_EXPIRATION, f"Invalid expiration {request.expiration}")
        record.request = request
        record.bound = _pending_bound(request)
        record.expires_at = self._expiry(request, now) if change.expiration is not None else record.expires_at

    def _modify_position(self, position: PositionRecord, change: ModifyRequest) -> None:
        if change.price is not None or change.stoplimit is not None or change.expiration is not None:
            raise Rejected(Retcode.INVALID, "Invalid request: a position takes only sl and tp")
        # MT5 removes an SL or TP set to 0.
        sl = position.sl if change.sl is None else change.sl or None
        tp = position.tp if change.tp is None else change.tp or None
        _check_stops(position.side, sl, tp, self.market.quote(position.symbol).closing(position.side))
        position.sl, position.tp = sl, tp

    # --- numbering and time ------------------------------------------------------------------

    def _new_ticket(self) -> int:
        self._next_ticket += 1
        return self._next_ticket - 1

    def _new_deal(self) -> int:
        self._next_deal += 1
        return self._next_deal - 1

    def _expiry(self, request: OrderRequest, now: datetime) -> datetime | None:
        if request.type_time is Mt5TimeType.DAY:
            return day_end(now, self.config.day_length_s)
        if request.type_time is Mt5TimeType.SPECIFIED:
            return request.expiration
        return None


def _entry_price(request: OrderRequest) -> float:
    """The price a pending order opens at: the limit of a stop-limit, else its price."""
    if request.type in STOP_LIMITS:
        return request.stoplimit or 0.0
    return request.price or 0.0


def _pending_bound(request: OrderRequest) -> float | None:
    if request.type in LIMITS:
        return request.price
    if request.type in STOP_LIMITS:
        return request.stoplimit
    return None


def _check_pending_prices(order_type: Mt5OrderType, price: float, stoplimit: float | None, quote: Quote) -> None:
    """A limit rests on the favourable side of the market, a stop on the other; a stop-limit's
    limit lies back from its stop (MT5: buy stop-limit above the ask with stoplimit below the stop)."""
    buy = side_of(order_type) is Side.BUY
    if order_type in LIMITS:
        valid = price < quote.ask if buy else price > quote.bid
    elif order_type in STOPS:
        valid = price > quote.ask if buy else price < quote.bid
    else:
        limit = stoplimit or 0.0
        valid = (price > quote.ask and limit < price) if buy else (price < quote.bid and limit > price)
    if not valid:
        raise Rejected(Retcode.INVALID_PRICE, f"Invalid price {price} for {order_type.value} at {quote.bid}/{quote.ask}")


def _check_stops(side: Side, sl: float | None, tp: float | None, reference: float) -> None:
    """SL below and TP above the reference for a buy, the other way round for a sell."""
    if sl and side.sign * (reference - sl) <= EPS:
        raise Rejected(Retcode.INVALID_STOPS, f"Invalid stops: SL {sl} is on the wrong side of {reference}")
    if tp and side.sign * (tp - reference) <= EPS:
        raise Rejected(Retcode.INVALID_STOPS, f"Invalid stops: TP {tp} is on the wrong side of {reference}")
