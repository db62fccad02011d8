"""PositionKeeper: positions as the fold of recorded fills (hedging: one per broker position
ticket), PnL, and periodic reconciliation against the connector's positions.

A disagreement with the broker is published as an alert and logged; it is corrected only
when ``auto_correct_positions`` is set. PnL is in the symbol's quote currency.
"""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from thespian.actors import WakeupMessage

from actors.base import RoleActor
from messages.actor import (
    BrokerUpdate,
    Configure,
    Delivered,
    FillsLoaded,
    FillsRecorded,
    GetPositions,
    LoadFills,
    Orphan,
    Peers,
    PositionsReply,
    PositionsSnapshot,
    PublishAlert,
    QueryPositions,
    Ready,
    RecordDeals,
    RecordPositions,
)
from messages.broker import BrokerFill, BrokerPosition
from messages.enums import (
    DealEntry,
    DealReason,
    ExitReason,
    OrderStatus,
    PositionSide,
    PositionStatus,
    Side,
)
from messages.order import EventKind, Fill, Order
from messages.position import Position, PositionAlert, position_id_for
from messages.symbols import SYMBOLS
from model.exposure import OpenPosition, PositionsView
from service.config import Settings
from service.logs import Log
from service.mt5 import fill_of

log = Log(__name__)

EXIT_REASONS = {
    DealReason.SL: ExitReason.STOP_LOSS,
    DealReason.TP: ExitReason.TAKE_PROFIT,
    DealReason.STOP_OUT: ExitReason.MANUAL,
    DealReason.CLIENT: ExitReason.SIGNAL,
}
# Deals are asked for again a little before the last check: a deal stamped just before it
# may have been published just after.
DEALS_OVERLAP = timedelta(minutes=1)
DEAL_GRACE = timedelta(seconds=3)
RECOVER_AGAIN = timedelta(seconds=30)
# A reconciliation once missing deals are recovered: one more, not one more periodic chain.
COMPARE_AGAIN = "compare again"


def open_position(fill: Fill, stop_loss: float | None, take_profit: float | None, at: datetime) -> Position:
    return Position(
        position_id=position_id_for(fill.position_ticket),
        ticket=fill.position_ticket,
        opened_at=fill.execution_timestamp,
        symbol=fill.symbol,
        side=PositionSide.LONG if fill.side is Side.BUY else PositionSide.SHORT,
        quantity=fill.fill_quantity,
        entry_price=fill.fill_price,
        entry_order_id=fill.order_id,
        stop_loss=stop_loss,
        take_profit=take_profit,
        commission_total=fill.commission,
        deals=(fill.deal,),
        updated_at=at,
    )


def add_to(position: Position, fill: Fill, at: datetime) -> Position:
    """Another entry deal of the same position ticket (a partial fill of its order)."""
    spec = SYMBOLS[position.symbol]
    return msgspec.structs.replace(
        position,
        quantity=spec.volume_of(spec.steps(position.quantity) + spec.steps(fill.fill_quantity)),
        entry_price=spec.average_price(position.entry_price, position.quantity, fill.fill_price, fill.fill_quantity),
        commission_total=position.commission_total + fill.commission,
        deals=(*position.deals, fill.deal),
        updated_at=at,
    )


def reduce(position: Position, fill: Fill, at: datetime) -> Position:
    """An exit deal: realize PnL on its volume; the position closes when nothing is left."""
    spec = SYMBOLS[position.symbol]
    direction = 1 if position.side is PositionSide.LONG else -1
    held_steps = spec.steps(position.quantity)
    volume = spec.volume_of(min(spec.steps(fill.fill_quantity), held_steps))
    realized = position.realized_pnl + (fill.fill_price - position.entry_price) * direction * volume * spec.contract_size
    closed_quantity = spec.volume_of(spec.steps(position.closed_quantity) + spec.steps(volume))
    exit_price = spec.average_price(position.exit_price, position.closed_quantity, fill.fill_price, volume)
    remaining = spec.volume_of(held_steps - spec.steps(volume))
    changes: dict[str, object] = {}
    if not remaining:
        held = fill.execution_timestamp - position.opened_at
        risk = abs(position.entry_price - position.stop_loss) * closed_quantity * spec.contract_size if position.stop_loss else 0.0
        changes = {
            "position_status": PositionStatus.CLOSED,
            "exit_reason": EXIT_REASONS[fill.reason],
            "closed_at": fill.execution_timestamp,
            "holding_period_hours": held.total_seconds() / 3600,
            "r_multiple": round(realized / risk, 4) if risk else None,
            "unrealized_pnl": 0.0,
            "current_price": fill.fill_price,
        }
    return msgspec.structs.replace(
        position,
        quantity=remaining,
        realized_pnl=round(realized, 8),
        closed_quantity=closed_quantity,
        exit_price=exit_price,
        exit_order_id=fill.order_id or position.exit_order_id,
        commission_total=position.commission_total + fill.commission,
        deals=(*position.deals, fill.deal),
        updated_at=at,
        **changes,
    )


class PositionBook:
    """The pure fold: fills in, positions out. Exit deals that arrive before their position's
    entry deal wait for it."""

    def __init__(self) -> None:
        self.positions: dict[int, Position] = {}
        self.early_exits: dict[int, list[Fill]] = {}

    def apply(self, fill: Fill, stop_loss: float | None, take_profit: float | None, at: datetime) -> list[Position]:
        """The positions this fill changes; ``at`` stamps them (the latest write wins in ClickHouse)."""
        ticket = fill.position_ticket
        position = self.positions.get(ticket)
        if position is not None and fill.deal in position.deals:
            return []
        if fill.entry is DealEntry.IN:
            position = add_to(position, fill, at) if position else open_position(fill, stop_loss, take_profit, at)
            self.positions[ticket] = position
            changed = [position]
            for early in self.early_exits.pop(ticket, []):
                changed += self.apply(early, None, None, at)
            return changed
        if position is None:
            early = self.early_exits.setdefault(ticket, [])
            if all(known.deal != fill.deal for known in early):  # (a fill may be published again)
                early.append(fill)
            return []
        self.positions[ticket] = reduce(position, fill, at)
        return [self.positions[ticket]]

    def restop(self, order: Order, at: datetime) -> list[Position]:
        """The open position ``order`` opened takes the order's new SL/TP. Only once the order is
        filled: before, the broker changed the working rest of the order, not the position its
        partial fills opened."""
        if order.status is not OrderStatus.FILLED:
            return []
        changed = []
        for ticket, position in self.positions.items():
            if position.entry_order_id == order.order_id and position.position_status is PositionStatus.OPEN:
                self.positions[ticket] = msgspec.structs.replace(position, stop_loss=order.stop_loss, take_profit=order.take_profit, updated_at=at)
                changed.append(self.positions[ticket])
        return changed

    def open_positions(self) -> list[Position]:
        return [p for p in self.positions.values() if p.position_status is PositionStatus.OPEN]


def open_position_of(position: Position) -> OpenPosition:
    """What the supervisor's exposure checks need of a position (closed: none of it is open)."""
    open_quantity = position.quantity if position.position_status is PositionStatus.OPEN else 0.0
    return OpenPosition(ticket=position.ticket, symbol=position.symbol, side=position.side, quantity=open_quantity, opened_at=position.opened_at)


class PositionKeeper(RoleActor):
    def __init__(self) -> None:
        super().__init__()
        self.book = PositionBook()
        self.deals_checked_until: datetime | None = None
        # Deals recovered and when (not asked for again before RECOVER_AGAIN).
        self.recovering: dict[int, datetime] = {}
        # The discrepancies alerted, as (ticket, kind) -> (ours, broker): each is alerted once
        # (again if it changes), not at every reconciliation while it lasts.
        self.alerted: dict[tuple[int, str], tuple[float | None, float | None]] = {}

    def receiveMsg_Configure(self, message: Configure, sender: Any) -> None:
        self.settings: Settings = message.settings
        self.peers: Peers = message.peers
        # Positions of the symbols this tree serves: the others are another tree's to keep.
        self.share = message.share
        self.configurer = sender
        self.send(self.peers.recorder, LoadFills())

    def receiveMsg_FillsLoaded(self, message: FillsLoaded, sender: Any) -> None:
        now = datetime.now(UTC)
        fills = [loaded for loaded in message.fills if self.share.owns(loaded[0].symbol)]
        for fill, stop_loss, take_profit in fills:
            self.book.apply(fill, stop_loss, take_profit, now)
        self.deals_checked_until = datetime.now(UTC) - timedelta(hours=self.settings.idempotency_window_hours)
        # What a keeper before this one computed but had not handed over is written again.
        self.hand_over(RecordPositions(list(self.book.positions.values())))
        opened = [open_position_of(p) for p in self.book.open_positions()]
        self.send(self.peers.supervisor, PositionsView(positions=opened, applied={}, complete=True))
        log.info("positions of %s rebuilt from %d fills: %d open", self.share, len(fills), len(self.book.open_positions()))
        self.wakeupAfter(timedelta(seconds=self.settings.reconcile_interval_s))
        self.send(self.configurer, Ready("positions"))

    def receiveMsg_FillsRecorded(self, message: FillsRecorded, sender: Any) -> None:
        changed: list[Position] = []
        # Volume applied per order: the supervisor stops counting it on the order.
        applied: dict[uuid.UUID, float] = defaultdict(float)
        now = datetime.now(UTC)
        fills = [(e.fill, e.order.stop_loss, e.order.take_profit) for e in message.events if e.fill is not None]
        for fill, stop_loss, take_profit in [*fills, *((fill, None, None) for fill in message.orphan_fills)]:
            moved = self.book.apply(fill, stop_loss, take_profit, now)
            if moved and fill.order_id is not None:
                applied[fill.order_id] += fill.fill_quantity
            changed += moved
        for event in message.events:
            if event.kind is EventKind.MODIFIED:
                changed += self.book.restop(event.order, now)
        if changed:
            self.hand_over(RecordPositions(changed))
            self.send(self.peers.supervisor, PositionsView(positions=[open_position_of(p) for p in changed], applied=dict(applied)))
        self.send(sender, Delivered("positions", message.batch_id))  # (the recorder may now let the batch go)

    def receiveMsg_GetPositions(self, message: GetPositions, sender: Any) -> None:
        self.send(sender, PositionsSnapshot(list(self.book.positions.values())))

    # --- reconciliation ---------------------------------------------------------------------

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        if self.handover_wakeup(message):
            return
        self.send(self.peers.gateway, QueryPositions(self.deals_checked_until))
        if message.payload != COMPARE_AGAIN:
            self.wakeupAfter(timedelta(seconds=self.settings.reconcile_interval_s))

    def receiveMsg_QueryPositions(self, message: QueryPositions, sender: Any) -> None:
        """Reconcile now (an operator's or a test's request)."""
        self.send(self.peers.gateway, message)

    def receiveMsg_PositionsReply(self, message: PositionsReply, sender: Any) -> None:
        now = datetime.now(UTC)
        if self._recover_missing_deals([deal for deal in message.deals if self.share.owns(deal.symbol)], now):
            return  # positions are compared once the missing deals are in
        self._compare([position for position in message.report.positions if self.share.owns(position.symbol)], now)

    def _recover_missing_deals(self, deals: list[BrokerFill], now: datetime) -> bool:
        """Deals the broker made that no fill message brought us: recorded now, exactly once
        (an order's deal goes to its order, which knows whether it has it)."""
        known = {deal for p in self.book.positions.values() for deal in p.deals}
        known |= {fill.deal for fills in self.book.early_exits.values() for fill in fills}
        settled = now - DEAL_GRACE  # younger deals may still be on their way as fill messages
        # A deal recovered lately may still be on its way through a busy recorder: asking again
        # every second would only add to what keeps it busy.
        self.recovering = {deal: at for deal, at in self.recovering.items() if deal not in known and now - at < RECOVER_AGAIN}
        missing = [deal for deal in deals if deal.deal not in known and deal.timestamp < settled and deal.deal not in self.recovering]
        for deal in missing:
            self.recovering[deal.deal] = now
            log.warning("reconciliation: deal %s (%s %s %s) never reached us: recovering it", deal.deal, deal.symbol, deal.side.value, deal.volume)
            if deal.order_id is None:
                self.hand_over(RecordDeals([fill_of(deal)]))
            else:
                self.send(self.peers.supervisor, Orphan(BrokerUpdate(deal.order_id, deal)))
        if missing:
            self.wakeupAfter(timedelta(seconds=1), payload=COMPARE_AGAIN)  # once they are recorded
        elif not self.recovering:  # (else asked for again from there: a recovery may not take)
            self.deals_checked_until = now - DEALS_OVERLAP
        return bool(missing)

    def _compare(self, broker_positions: list[BrokerPosition], now: datetime) -> None:
        theirs = {p.ticket: p for p in broker_positions}
        ours = {p.ticket: p for p in self.book.open_positions()}
        changed: list[Position] = []
        found: list[tuple[int, str, str, float | None, float | None]] = []  # ticket, symbol, kind, ours, broker
        for ticket, broker in theirs.items():
            mine = ours.get(ticket)
            if mine is None:
                found.append((ticket, broker.symbol, "missing_here", None, broker.volume))
            elif SYMBOLS[mine.symbol].steps(mine.quantity) != SYMBOLS[mine.symbol].steps(broker.volume):
                found.append((ticket, mine.symbol, "volume_mismatch", mine.quantity, broker.volume))
                if self.settings.auto_correct_positions:
                    corrected = msgspec.structs.replace(mine, quantity=broker.volume, updated_at=now)
                    self.book.positions[ticket] = corrected
                    self.send(self.peers.supervisor, PositionsView(positions=[open_position_of(corrected)], applied={}))
            else:
                changed.append(self._mark(mine, broker, now))
        found += [(ticket, mine.symbol, "missing_at_broker", mine.quantity, None) for ticket, mine in ours.items() if ticket not in theirs]
        standing, self.alerted = self.alerted, {(ticket, kind): (mine, broker) for ticket, _, kind, mine, broker in found}
        for ticket, symbol, kind, mine, broker in found:
            if standing.get((ticket, kind)) != (mine, broker):  # new, or changed since it was alerted
                self._alert(ticket, symbol, kind, mine, broker, now)
        for ticket, kind in standing.keys() - self.alerted.keys():
            log.warning("reconciliation: position %s in step again (it was %s)", ticket, kind)
        if changed:
            self.hand_over(RecordPositions(changed))

    def _mark(self, position: Position, broker: BrokerPosition, now: datetime) -> Position:
        direction = 1 if position.side is PositionSide.LONG else -1
        spec = SYMBOLS[position.symbol]
        unrealized = (broker.price_current - position.entry_price) * direction * position.quantity * spec.contract_size
        marked = msgspec.structs.replace(
            position,
            current_price=broker.price_current,
            unrealized_pnl=round(unrealized, 8),
            updated_at=now,
        )
        self.book.positions[position.ticket] = marked
        return marked

    def _alert(self, ticket: int, symbol: str, kind: str, ours: float | None, broker: float | None, now: datetime) -> None:
        corrected = self.settings.auto_correct_positions and kind == "volume_mismatch"
        alert = PositionAlert(
            ticket=ticket,
            symbol=symbol,
            kind=kind,
            ours=ours,
            broker=broker,
            detail=f"position {ticket} {symbol}: ours {ours}, broker {broker}",
            corrected=corrected,
            at=now,
        )
        log.warning("reconciliation: %s %s", kind, alert.detail)
        self.send(self.peers.status_publisher, PublishAlert(alert))
