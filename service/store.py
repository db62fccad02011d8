"""ClickHouse through clickhouse-connect: embedded chdb by default, a server for http(s) DSNs.

Embedded chdb opens its on-disk database from one process at a time, so inside the running
service only the ClickHouse writer actor holds a Store; everything else asks it.

The service writes every version of its orders, executions and positions to tables of its
own (order_versions, execution_records, position_versions) and reads them; other services
read views of one row each under upstream's names (orders, executions, positions).
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from importlib import resources
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import clickhouse_connect
import msgspec
from clickhouse_connect.driver.binding import bind_query
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from messages.codec import encode
from messages.control import ControlRecord, TradingHalt
from messages.enums import Side
from messages.order import Fill, OrderEvent
from messages.position import Position
from messages.symbols import SYMBOLS
from model.order import slippage_points
from service.config import ClickHouseAuth
from service.logs import Log

log = Log(__name__)

TERMINAL_STATUSES = ("filled", "cancelled", "rejected", "failed")
# What a write into a table or database that is not there fails with (dropped while running).
SCHEMA_MISSING = {60, 81}  # UNKNOWN_TABLE, UNKNOWN_DATABASE


def connect(dsn: str, database: str, auth: ClickHouseAuth = ClickHouseAuth()) -> Client:
    """A client for ``dsn`` (``chdb:///path`` or ``http(s)://...``), with ``database`` created."""
    client = open_client(dsn, auth, database=None if dsn.startswith("chdb:") else "default")
    client.command(f"CREATE DATABASE IF NOT EXISTS {database}")
    return client


def open_client(dsn: str, auth: ClickHouseAuth, **options: Any) -> Client:
    """The one place a ClickHouse client is made: a server gets ``auth``, chdb has none."""
    if not dsn.startswith("chdb:"):
        # clickhouse-connect takes the interface from the port (https only on 443 and 8443),
        # not from the DSN's scheme: https://host:9440/ would be plain http, password and all.
        options.update(interface=urlsplit(dsn).scheme, verify=auth.verify)
        if auth.user:
            options.update(username=auth.user, password=auth.password)
        if auth.ca_file:
            options["ca_cert"] = auth.ca_file
    return clickhouse_connect.get_client(dsn=dsn, **options)


class Checkpoint(NamedTuple):
    confirmed_before: datetime
    instance: str


class Migration(NamedTuple):
    version: int
    name: str
    apply: Callable[[Client, str], None]


def migrations() -> list[Migration]:
    """Every migration shipped, in order (see service/migrations/__init__.py)."""
    found = []
    for entry in resources.files("service.migrations").iterdir():
        version, _, _ = entry.name.partition("_")
        if not version.isdigit():
            continue
        if entry.name.endswith(".sql"):
            found.append(Migration(int(version), entry.name, partial(run_sql, entry.read_text())))
        elif entry.name.endswith(".py"):
            module = importlib.import_module(f"service.migrations.{entry.name.removesuffix('.py')}")
            found.append(Migration(int(version), entry.name, module.apply))
    return sorted(found, key=lambda migration: migration.version)


def migrate(client: Client, database: str) -> list[str]:
    """Apply the migrations not yet recorded in ``schema_migrations``; return their names."""
    client.command(
        f"CREATE TABLE IF NOT EXISTS {database}.schema_migrations "
        "(version UInt32, name String, applied_at DateTime64(3, 'UTC')) ENGINE = MergeTree ORDER BY version"
    )
    done = {row[0] for row in client.query(f"SELECT version FROM {database}.schema_migrations").result_rows}
    applied = []
    for migration in migrations():
        if migration.version in done:
            continue
        migration.apply(client, database)
        client.insert(
            f"{database}.schema_migrations",
            [[migration.version, migration.name, datetime.now(UTC)]],
            column_names=["version", "name", "applied_at"],
        )
        applied.append(migration.name)
        log.info("migration %s applied", migration.name)
    return applied


def ensure_schema(client: Client, database: str) -> None:
    """Create whatever service/schema.sql declares and the database lacks."""
    run_sql(resources.files("service").joinpath("schema.sql").read_text(), client, database)


def run_sql(sql: str, client: Client, database: str) -> None:
    for statement in _statements(sql.replace("{db}", database)):
        client.command(statement)


def _statements(sql: str) -> list[str]:
    lines = [line for line in sql.splitlines() if not line.lstrip().startswith("--")]
    return [part.strip() for part in "\n".join(lines).split(";") if part.strip()]


def order_slippage_pips(symbol: str, side: Side, average_fill_price: float | None, expected_price: float) -> float | None:
    """An order's volume-weighted slippage in pips (positive = adverse), None before its first
    fill: the slippage of its average fill price, as each fill's is measured."""
    if average_fill_price is None:
        return None
    return float(slippage_points(side.sign, average_fill_price, expected_price, SYMBOLS[symbol]) / 10)


ORDER_COLUMNS = [
    "order_id", "created_at", "signal_id", "symbol", "timeframe", "order_type", "side", "quantity",
    "price", "stop_price", "order_status", "broker_order_id", "submitted_at", "filled_at",
    "cancelled_at", "filled_quantity", "average_fill_price", "commission", "rejection_reason",
    "error_message", "expected_price", "slippage_pips", "stop_loss", "take_profit", "time_in_force",
    "expires_at", "close_position", "signal_fingerprint", "actor_address", "version", "updated_at",
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

CONTROL_COLUMNS = ["version", "halted", "halt_id", "reason", "halted_since", "changed_at"]

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
        o.error_message, o.expected_price, order_slippage_pips(o.symbol, o.side, o.average_fill_price, o.expected_price),
        o.stop_loss, o.take_profit, o.time_in_force.value, o.expires_at, o.close_position, o.signal_fingerprint,
        event.actor_address, o.version, event.at,
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

    def __init__(self, dsn: str, database: str, auth: ClickHouseAuth = ClickHouseAuth()) -> None:
        self.database = database
        self.client = connect(dsn, database, auth)
        migrate(self.client, database)
        ensure_schema(self.client, database)
        # Queries from outside the service (the sql command, tests) go through a client that
        # ClickHouse itself keeps read-only. readonly=1, not 2: under 2 chdb still runs
        # file() and INSERT INTO FUNCTION file(...). (1 forbids changing settings, so these
        # queries carry none; over HTTP a server applies a request's readonly after checking
        # the request's other settings, as clickhouse-connect sends them.)
        self.reader = open_client(dsn, auth, database=database, settings={"readonly": 1})

    def close(self) -> None:
        self.reader.close()
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
        # Executions last: a fill row ClickHouse refuses for good (its event is dead-lettered)
        # leaves the order's row right.
        self._insert("order_events", [_event_row(e) for e in events], EVENT_COLUMNS)
        self._insert("order_versions", [_order_row(e) for e in latest.values()], ORDER_COLUMNS)
        if fills:
            self._insert("execution_records", fills, EXECUTION_COLUMNS)

    def record_fills(self, fills: Iterable[Fill], actor_address: str) -> None:
        """Deals with no order of ours behind them (SL/TP/stop-out closes at the broker)."""
        now = datetime.now(UTC)
        rows = [_execution_row(fill, actor_address, now) for fill in fills]
        if rows:
            self._insert("execution_records", rows, EXECUTION_COLUMNS)

    def record_positions(self, positions: Sequence[Position]) -> None:
        if positions:
            self._insert("position_versions", [_position_row(p) for p in positions], POSITION_COLUMNS)

    def _insert(self, table: str, rows: list[list[object]], columns: list[str]) -> None:
        try:
            self.client.insert(f"{self.database}.{table}", rows, column_names=columns)
        except DatabaseError as exc:
            if exc.code not in SCHEMA_MISSING:
                raise
            # Dropped while running: waiting would not bring it back, repairing does.
            log.warning("writing %s: %s; repairing the schema and writing again", table, exc)
            ensure_schema(self.client, self.database)
            self.client.insert(f"{self.database}.{table}", rows, column_names=columns)

    def record_control(self, record: ControlRecord) -> None:
        halt = record.halt
        row = (
            [record.version, False, None, "", None, record.at]
            if halt is None
            else [record.version, True, halt.halt_id, halt.reason, halt.since, record.at]
        )
        self._insert("execution_control", [row], CONTROL_COLUMNS)

    def control(self) -> ControlRecord | None:
        """The trading control in force: the change of the highest version (None: never changed)."""
        rows = self.client.query(
            f"SELECT {', '.join(CONTROL_COLUMNS)} FROM {self.database}.execution_control ORDER BY version DESC LIMIT 1"
        ).result_rows
        if not rows:
            return None
        version, halted, halt_id, reason, since, at = rows[0]
        halt = TradingHalt(halt_id=halt_id, reason=reason, since=since) if halted else None
        return ControlRecord(version=version, halt=halt, at=at)

    def record_checkpoint(self, partition: int, confirmed_before: datetime, instance: str) -> None:
        self._insert(
            "partition_checkpoints",
            [[partition, confirmed_before, instance, datetime.now(UTC)]],
            ["partition", "confirmed_before", "instance", "at"],
        )

    def checkpoint(self, partition: int) -> Checkpoint | None:
        """Before when every event of the partition was confirmed by the sinks, as its last
        owner last wrote it (None: never served by an instance that shares the work)."""
        rows = self.client.query(
            f"SELECT confirmed_before, instance FROM {self.database}.partition_checkpoints "
            "WHERE partition = {p:UInt16} ORDER BY at DESC LIMIT 1",
            parameters={"p": partition},
        ).result_rows
        if not rows:
            return None
        confirmed_before, instance = rows[0]
        return Checkpoint(confirmed_before.replace(tzinfo=UTC), instance)  # the driver gives UTC without a zone

    def events_since(self, since: datetime) -> list[OrderEvent]:
        rows = self.client.query(
            f"SELECT payload FROM {self.database}.order_events FINAL WHERE at >= {{since:DateTime64(3, 'UTC')}} ORDER BY order_id, seq",
            parameters={"since": since},
        ).result_rows
        return [msgspec.json.decode(row[0], type=OrderEvent) for row in rows]

    def read_only(self, sql: str, parameters: dict[str, Any]) -> tuple[list[str], list[tuple[Any, ...]]]:
        """(columns, rows) of one statement, run read-only, in the service's database by default.
        Parameters bind as clickhouse-connect binds them: ``{name:Type}`` or ``%(name)s``."""
        sql = sql.strip()
        bound, _ = bind_query(sql, parameters, self.reader.server_tz)
        # ClickHouse's parser refuses several statements (chdb itself would run them all).
        self.reader.query("SELECT formatQuery({sql:String})", parameters={"sql": bound})
        result = self.reader.query(sql, parameters=parameters)
        return list(result.column_names), [tuple(row) for row in result.result_rows]

    def signal_orders(self, window: timedelta) -> dict[uuid.UUID, tuple[uuid.UUID, str]]:
        """signal_id -> (order_id, signal fingerprint) of every order created within the
        idempotency window."""
        since = datetime.now(UTC) - window
        rows = self.client.query(
            f"SELECT signal_id, any(order_id), any(signal_fingerprint) FROM {self.database}.order_versions "
            "WHERE created_at >= {since:DateTime64(3, 'UTC')} GROUP BY signal_id",
            parameters={"since": since},
        ).result_rows
        return {signal_id: (order_id, fingerprint) for signal_id, order_id, fingerprint in rows}

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
            f"  any(payload) AS payload FROM {self.database}.execution_records GROUP BY execution_id) AS e "
            f"LEFT JOIN (SELECT order_id, stop_loss, take_profit FROM {self.database}.order_versions FINAL) AS o "
            f"ON e.order_id = o.order_id ORDER BY e.ts, e.deal"
        ).result_rows
        return [(msgspec.json.decode(row[0], type=Fill), row[1], row[2]) for row in rows]
