"""ClickHouse through clickhouse-connect: embedded chdb by default, a server for http(s) DSNs.

Embedded chdb opens its on-disk database from one process at a time, so inside the running
service only the ClickHouse writer actor holds a Store; everything else asks it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from importlib import resources

import clickhouse_connect
import msgspec
from clickhouse_connect.driver.client import Client

from messages.codec import encode
from messages.order import Fill, OrderEvent
from messages.position import Position
from service.logs import Log

log = Log(__name__)

TERMINAL_STATUSES = ("filled", "cancelled", "rejected", "failed")


def connect(dsn: str, database: str) -> Client:
    """A client for ``dsn`` (``chdb:///path`` or ``http(s)://...``), with ``database`` created."""
    if dsn.startswith("chdb:"):
        client = clickhouse_connect.get_client(dsn=dsn)
    else:
        client = clickhouse_connect.get_client(dsn=dsn, database="default")
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    return client


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration shipped, in order."""
    found = []
    for entry in resources.files("service.migrations").iterdir():
        if entry.name.endswith(".sql"):
            version = int(entry.name.split("_", 1)[0])
            found.append((version, entry.name, entry.read_text()))
    return sorted(found)


def migrate(client: Client, database: str) -> list[str]:
    """Apply the migrations not yet recorded in ``schema_migrations``; return their names."""
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY version"
    )
    done = {row[0] for row in client.query(f"SELECT version FROM {database}.schema_migrations").result_rows}
    applied = []
    for version, name, sql in migrations():
        if version in done:
            continue
        for statement in _statements(sql.replace("{db}", database)):
            client.command(statement)
        client.insert(
            f"{database}.schema_migrations",
            [[version, name, datetime.now(UTC)]],
            column_names=["version", "name", "applied_at"],
        )
        applied.append(name)
        log.info("migration %s applied", name)
    return applied


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


ORDER_COLUMNS = [
    "order_id", "created_at", "signal_id", "symbol", "timeframe", "order_type", "side", "quantity",
    "price", "stop_price", "order_status", "broker_order_id", "submitted_at", "filled_at",
    "cancelled_at", "filled_quantity", "average_fill_price", "commission", "rejection_reason",
    "error_message", "expected_price", "stop_loss", "take_profit", "time_in_force", "expires_at",
    "close_position", "actor_address", "version", "updated_at",
]  # fmt: skip

EXECUTION_COLUMNS = [
    "execution_id", "order_id", "fill_price", "fill_quantity", "slippage", "commission",
    "execution_timestamp", "deal", "ticket", "position_ticket", "symbol", "side", "expected_price",
    "slippage_pips", "swap", "entry", "reason", "actor_address", "recorded_at", "payload",
]  # fmt: skip

POSITION_COLUMNS = [
    "position_id", "opened_at", "symbol", "side", "quantity", "entry_price", "stop_loss",
    "take_profit", "position_status", "current_price", "unrealized_pnl", "realized_pnl",
    "commission_total", "exit_price", "exit_reason", "closed_at", "r_multiple",
    "holding_period_hours", "entry_order_id", "exit_order_id", "ticket", "closed_quantity",
    "updated_at",
]  # fmt: skip

EVENT_COLUMNS = [
    "event_id", "order_id", "seq", "kind", "order_status", "signal_id", "symbol", "at",
    "actor_address", "detail", "payload",
]  # fmt: skip


def _order_row(event: OrderEvent) -> list[object]:
    o = event.order
    return [
        o.order_id, o.created_at, o.signal_id, o.symbol, o.timeframe, o.order_type.value, o.side.value,
        o.quantity, o.price, o.stop_price, o.status.value, o.broker_order_id, o.submitted_at, o.filled_at,
        o.cancelled_at, o.filled_quantity, o.average_fill_price, o.commission, o.rejection_reason,
        o.error_message, o.expected_price, o.stop_loss, o.take_profit, o.time_in_force.value, o.expires_at,
        o.close_position, event.actor_address, o.version, event.at,
    ]  # fmt: skip


def _execution_row(fill: Fill, actor_address: str, recorded_at: datetime) -> list[object]:
    return [
        fill.execution_id, fill.order_id, fill.fill_price, fill.fill_quantity, fill.slippage, fill.commission,
        fill.execution_timestamp, fill.deal, fill.ticket, fill.position_ticket, fill.symbol, fill.side.value,
        fill.expected_price, fill.slippage_pips, fill.swap, fill.entry.value, fill.reason.value, actor_address,
        recorded_at, encode(fill).decode(),
    ]  # fmt: skip


def _position_row(p: Position) -> list[object]:
    return [
        p.position_id, p.opened_at, p.symbol, p.side.value, p.quantity, p.entry_price, p.stop_loss,
        p.take_profit, p.position_status.value, p.current_price, p.unrealized_pnl, p.realized_pnl,
        p.commission_total, p.exit_price, p.exit_reason.value if p.exit_reason else None, p.closed_at,
        p.r_multiple, p.holding_period_hours, p.entry_order_id, p.exit_order_id, p.ticket,
        p.closed_quantity, p.updated_at or p.opened_at,
    ]  # fmt: skip


def _event_row(event: OrderEvent) -> list[object]:
    return [
        event.event_id, event.order_id, event.seq, event.kind.value, event.status.value,
        event.order.signal_id, event.order.symbol, event.at, event.actor_address, event.detail,
        encode(event).decode(),
    ]  # fmt: skip


class Store:
    """The service's reads and writes, one method per question the service asks."""

    def __init__(self, dsn: str, database: str) -> None:
        self.database = database
        self.client = connect(dsn, database)
        migrate(self.client, database)

    def close(self) -> None:
        self.client.close()

    def record_events(self, events: Sequence[OrderEvent]) -> None:
        """Lifecycle events, the orders' latest snapshots and their fills, in one batch per table."""
        if not events:
            return
        now = datetime.now(UTC)
        latest: dict[uuid.UUID, OrderEvent] = {}
        for event in events:
            if event.order_id not in latest or latest[event.order_id].seq < event.seq:
                latest[event.order_id] = event
        fills = [_execution_row(e.fill, e.actor_address, now) for e in events if e.fill is not None]
        # Events first: they are what recovery folds, so a crash between tables loses nothing.
        self._insert("order_events", [_event_row(e) for e in events], EVENT_COLUMNS)
        if fills:
            self._insert("executions", fills, EXECUTION_COLUMNS)
        self._insert("orders", [_order_row(e) for e in latest.values()], ORDER_COLUMNS)

    def record_fills(self, fills: Iterable[Fill], actor_address: str) -> None:
        """Deals with no order of ours behind them (SL/TP/stop-out closes at the broker)."""
        now = datetime.now(UTC)
        rows = [_execution_row(fill, actor_address, now) for fill in fills]
        if rows:
            self._insert("executions", rows, EXECUTION_COLUMNS)

    def record_positions(self, positions: Sequence[Position]) -> None:
        if positions:
            self._insert("positions", [_position_row(p) for p in positions], POSITION_COLUMNS)

    def _insert(self, table: str, rows: list[list[object]], columns: list[str]) -> None:
        self.client.insert(f"{self.database}.{table}", rows, column_names=columns)

    def signal_orders(self, window: timedelta) -> dict[uuid.UUID, uuid.UUID]:
        """signal_id -> order_id of every order created within the idempotency window."""
        since = datetime.now(UTC) - window
        rows = self.client.query(
            f"SELECT signal_id, any(order_id) FROM {self.database}.orders "
            "WHERE created_at >= {since:DateTime64(3, 'UTC')} GROUP BY signal_id",
            parameters={"since": since},
        ).result_rows
        return {row[0]: row[1] for row in rows}

    def signals_in_trading_signals(self, signal_ids: Sequence[uuid.UUID]) -> set[uuid.UUID]:
        """Which of these signals upstream recorded as approved in ``trading_signals``."""
        rows = self.client.query(
            f"SELECT DISTINCT signal_id FROM {self.database}.trading_signals "
            "WHERE signal_id IN {ids:Array(UUID)} AND risk_approval_status = 'approved'",
            parameters={"ids": list(signal_ids)},
        ).result_rows
        return {row[0] for row in rows}

    def latest_snapshots(self, open_only: bool) -> list[OrderEvent]:
        """The last recorded event of each order; with open_only, of each non-terminal order."""
        having = f"HAVING argMax(order_status, seq) NOT IN {TERMINAL_STATUSES}" if open_only else ""
        rows = self.client.query(
            f"SELECT argMax(payload, seq) FROM {self.database}.order_events GROUP BY order_id {having}"
        ).result_rows
        return [msgspec.json.decode(row[0], type=OrderEvent) for row in rows]

    def history(self, order_id: uuid.UUID) -> list[OrderEvent]:
        rows = self.client.query(
            f"SELECT payload FROM {self.database}.order_events FINAL WHERE order_id = {{id:UUID}} ORDER BY seq",
            parameters={"id": order_id},
        ).result_rows
        return [msgspec.json.decode(row[0], type=OrderEvent) for row in rows]

    def fills_with_stops(self) -> list[tuple[Fill, float | None, float | None]]:
        """Every recorded deal in time order, with the stop-loss and take-profit of the order
        behind it: what the position keeper folds to rebuild positions."""
        rows = self.client.query(
            f"SELECT e.payload, o.stop_loss, o.take_profit FROM ("
            f"  SELECT execution_id, any(order_id) AS order_id, any(execution_timestamp) AS ts, any(deal) AS deal,"
            f"  any(payload) AS payload FROM {self.database}.executions GROUP BY execution_id) AS e "
            f"LEFT JOIN (SELECT order_id, stop_loss, take_profit FROM {self.database}.orders FINAL) AS o "
            f"ON e.order_id = o.order_id ORDER BY e.ts, e.deal"
        ).result_rows
        return [(msgspec.json.decode(row[0], type=Fill), row[1], row[2]) for row in rows]
