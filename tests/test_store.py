"""service.store against both kinds of DSN: embedded chdb (``chdb:///path``) and a server
(``http://...``), the latter served by tests/clickhouse_http.py (ClickHouse's engine behind
ClickHouse's HTTP interface, since no ClickHouse server can be installed here), so the
server DSN's code path (clickhouse-connect's HTTP client) runs for real.

Each scenario is a plain function of (dsn, database) and runs unchanged on both:
- http: in the pytest process, against one HTTP front per module (its own tmp path), each
  test on a database of its own;
- embedded: in a subprocess of its own (``python tests/test_store.py SCENARIO DSN DATABASE``)
  on a fresh tmp path. chdb hosts one engine path per process, for the life of the process,
  and the pytest process also forks Thespian's processes for other tests: so chdb is never
  loaded into the pytest process (as in the rest of the suite), and a subprocess per test
  costs about half a second.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
import pytest
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from messages.enums import (
    DealEntry,
    DealReason,
    ExitReason,
    OrderStatus,
    OrderType,
    PositionSide,
    PositionStatus,
    Side,
)
from messages.order import (
    EventKind,
    Fill,
    Order,
    OrderEvent,
    execution_id_for,
    order_id_for,
)
from messages.position import Position, position_id_for
from service.store import (
    EXECUTION_COLUMNS,
    ORDER_COLUMNS,
    POSITION_COLUMNS,
    Store,
    _execution_row,
    _order_row,
    _position_row,
    connect,
    migrate,
    migrations,
)
from harness import clickhouse_front
from upstream import ORDERS_DDL, POSITIONS_DDL, TRADING_SIGNALS_DDL, trading_signal_row

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ACTOR = "test/recorder"

Scenario = Callable[[str, str], None]


# ---- messages ------------------------------------------------------------------------------


def _now() -> datetime:
    # Milliseconds: what DateTime64(3) columns keep (payloads keep everything anyway).
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def new_order(created_at: datetime | None = None, **fields: object) -> Order:
    signal_id = uuid.uuid4()
    values: dict[str, object] = dict(
        order_id=order_id_for(signal_id), signal_id=signal_id, symbol="EURUSD", side=Side.BUY,
        order_type=OrderType.MARKET, quantity=0.2, expected_price=1.085, created_at=created_at or _now(),
        stop_loss=1.08, take_profit=1.095, timeframe="H1", actor_address=ACTOR,
    )  # fmt: skip
    values.update(fields)
    return Order(**values)  # type: ignore[arg-type]


def step(order: Order, kind: EventKind, status: OrderStatus, fill: Fill | None = None, **changes: object) -> OrderEvent:
    """The next event of ``order`` (version + 1), carrying the order after it."""
    version = order.version + 1
    after = msgspec.structs.replace(order, status=status, version=version, **changes)
    return OrderEvent(
        event_id=f"{order.order_id}:{version}", order_id=order.order_id, seq=version, kind=kind,
        status=status, at=_now(), actor_address=ACTOR, order=after, fill=fill,
    )  # fmt: skip


def new_fill(order: Order | None, deal: int, price: float, volume: float, **fields: object) -> Fill:
    values: dict[str, object] = dict(
        execution_id=execution_id_for(deal), order_id=order.order_id if order else None, deal=deal,
        ticket=deal + 1000, position_ticket=deal + 2000, symbol="EURUSD", side=Side.BUY,
        fill_price=price, fill_quantity=volume, expected_price=order.expected_price if order else None,
        slippage=None, slippage_pips=None, commission=-0.7, swap=0.0, entry=DealEntry.IN,
        reason=DealReason.CLIENT, execution_timestamp=_now(),
    )  # fmt: skip
    values.update(fields)
    return Fill(**values)  # type: ignore[arg-type]


def filled_lifecycle(order: Order, deal: int) -> list[OrderEvent]:
    """created, submitted, filled (one deal): versions 1, 2, 3."""
    created = step(order, EventKind.CREATED, OrderStatus.PENDING)
    submitted = step(created.order, EventKind.SUBMITTED, OrderStatus.SUBMITTED, submitted_at=_now())
    fill = new_fill(order, deal, 1.0853, order.quantity, slippage=0.0003, slippage_pips=3.0)
    filled = step(
        submitted.order, EventKind.FILL, OrderStatus.FILLED, fill=fill, filled_quantity=order.quantity,
        average_fill_price=1.0853, commission=-0.7, deals=(deal,), broker_order_id=str(fill.ticket),
        filled_at=fill.execution_timestamp,
    )  # fmt: skip
    return [created, submitted, filled]


def _one(store: Store, sql: str, **parameters: object) -> list[tuple]:
    return store.client.query(sql.replace("{db}", store.database), parameters=parameters).result_rows


# ---- scenarios (each runs on both DSNs) ------------------------------------------------------

# What service/schema.sql declares: the service's tables and the views under upstream's names.
DECLARED = (
    "order_versions", "execution_records", "position_versions", "order_events",
    "orders", "executions", "positions", "trading_signals",
)  # fmt: skip


def schema(client: Client, database: str) -> dict[str, str]:
    """Each declared object's CREATE statement as ClickHouse shows it, the database named ``db``."""
    rows = client.query(
        "SELECT name, replaceAll(create_table_query, {d:String}, 'db') FROM system.tables "
        "WHERE database = {d:String} AND name IN {names:Array(String)}",
        parameters={"d": database, "names": list(DECLARED)},
    ).result_rows
    return dict(rows)


def columns(client: Client, table: str) -> list[tuple[str, str]]:
    return [(row[0], row[1]) for row in client.query(f"DESCRIBE TABLE {table}").result_rows]


def migrations_run_twice(dsn: str, database: str) -> None:
    shipped = migrations()
    client = connect(dsn, database)
    try:
        first = migrate(client, database)
        second = migrate(client, database)
    finally:
        client.close()
    assert first == [migration.name for migration in shipped] == ["001_core_tables.sql", "002_upstream_names.py"], first
    assert second == [], second
    store = Store(dsn, database)  # a third run, as every start of the service does
    try:
        rows = _one(store, "SELECT version, count() FROM {db}.schema_migrations GROUP BY version ORDER BY version")
        assert rows == [(migration.version, 1) for migration in shipped], rows
        assert set(schema(store.client, database)) == set(DECLARED)
        leftovers = _one(store, "SELECT name FROM system.tables WHERE database = {d:String} AND name LIKE 'trading_signals_%'", d=database)
        assert leftovers == [], leftovers  # a fresh database's development trading_signals was empty: dropped
    finally:
        store.close()


def events_round_trip(dsn: str, database: str) -> None:
    store = Store(dsn, database)
    try:
        filled = filled_lifecycle(new_order(signal_fingerprint="fp-a"), deal=5001)
        opened = new_order(side=Side.SELL, order_type=OrderType.LIMIT, price=1.09, symbol="XAUUSD", signal_fingerprint="fp-b")
        open_created = step(opened, EventKind.CREATED, OrderStatus.PENDING)
        open_submitted = step(open_created.order, EventKind.SUBMITTED, OrderStatus.SUBMITTED, submitted_at=_now())
        old = step(new_order(created_at=_now() - timedelta(days=2)), EventKind.CREATED, OrderStatus.PENDING)
        # Two batches, as the recorder writes them: an order's events span batches.
        store.record_events([filled[0], filled[1], open_created, old])
        store.record_events([filled[2], open_submitted])

        a, b = filled[0].order, opened
        assert store.history(a.order_id) == filled
        assert store.history(b.order_id) == [open_created, open_submitted]
        assert store.history(uuid.uuid4()) == []

        latest = sorted(store.latest_snapshots(open_only=False), key=lambda e: str(e.order_id))
        assert latest == sorted([filled[2], open_submitted, old], key=lambda e: str(e.order_id)), latest
        open_now = sorted(store.latest_snapshots(open_only=True), key=lambda e: str(e.order_id))
        assert open_now == sorted([open_submitted, old], key=lambda e: str(e.order_id)), open_now

        assert store.signal_orders(timedelta(hours=24)) == {a.signal_id: (a.order_id, "fp-a"), b.signal_id: (b.order_id, "fp-b")}
        assert store.signal_orders(timedelta(days=3))[old.order.signal_id] == (old.order_id, "")

        rows = _one(
            store,
            "SELECT order_status, state, side, order_type, quantity, filled_quantity, average_fill_price, fill_price, "
            "entry_price, slippage_pips, broker_order_id, stop_loss, take_profit, signal_fingerprint, version, "
            "actor_address, toUnixTimestamp64Milli(created_at) FROM {db}.orders WHERE order_id = {id:UUID}",
            id=a.order_id,
        )
        created_ms = round(a.created_at.timestamp() * 1000)
        assert rows == [
            ("filled", "FILLED", "buy", "market", 0.2, 0.2, 1.0853, 1.0853, 1.085, 3.0, "6001", 1.08, 1.095, "fp-a", 3, ACTOR, created_ms)
        ], rows
        rows = _one(store, "SELECT state, fill_price, slippage_pips FROM {db}.orders WHERE order_id = {id:UUID}", id=b.order_id)
        assert rows == [("SUBMITTED", None, None)], rows  # no slippage before a fill

        fill = filled[2].fill
        assert fill is not None
        assert store.fills_with_stops() == [(fill, 1.08, 1.095)]
        rows = _one(
            store,
            "SELECT order_id, fill_price, fill_quantity, slippage, slippage_pips, side, entry, reason, deal FROM {db}.executions",
        )
        assert rows == [(a.order_id, 1.0853, 0.2, 0.0003, 3.0, "buy", "in", "client", 5001)], rows
    finally:
        store.close()


def latest_order_version_wins(dsn: str, database: str) -> None:
    store = Store(dsn, database)
    try:
        v1, v2, v3 = filled_lifecycle(new_order(), deal=7001)
        store.client.command(f"SYSTEM STOP MERGES {database}.order_versions")  # so the versions are there to see
        for event in (v2, v3, v1):  # separate inserts, out of order
            store.record_events([event])
        assert _one(store, "SELECT count() FROM {db}.order_versions") == [(3,)]
        # A plain query on the view sees one row, the latest, and filters on it.
        assert _one(store, "SELECT count() FROM {db}.orders") == [(1,)]
        assert _one(store, "SELECT order_status, version FROM {db}.orders") == [("filled", 3)]
        assert _one(store, "SELECT count() FROM {db}.orders WHERE order_status = 'pending'") == [(0,)]
        store.client.command(f"SYSTEM START MERGES {database}.order_versions")
        store.client.command(f"OPTIMIZE TABLE {database}.order_versions FINAL")
        assert _one(store, "SELECT order_status, version FROM {db}.order_versions") == [("filled", 3)]
        assert _one(store, "SELECT order_status, version FROM {db}.orders") == [("filled", 3)]
        assert store.latest_snapshots(open_only=False) == [v3]
        assert store.latest_snapshots(open_only=True) == []
    finally:
        store.close()


def rewritten_events_collapse(dsn: str, database: str) -> None:
    store = Store(dsn, database)
    try:
        events = filled_lifecycle(new_order(), deal=8001)
        store.client.command(f"SYSTEM STOP MERGES {database}.execution_records")
        store.record_events(events)
        store.record_events(events)  # a retried batch: every row written again
        order_id = events[0].order_id
        rows = _one(store, "SELECT seq, count() FROM {db}.order_events FINAL WHERE order_id = {id:UUID} GROUP BY seq ORDER BY seq", id=order_id)
        assert rows == [(1, 1), (2, 1), (3, 1)], rows
        assert store.history(order_id) == events
        assert _one(store, "SELECT count() FROM {db}.execution_records WHERE deal = 8001") == [(2,)]
        assert _one(store, "SELECT count() FROM {db}.executions WHERE deal = 8001") == [(1,)]
        assert len(store.fills_with_stops()) == 1
    finally:
        store.close()


def deal_recorded_twice_is_one_row(dsn: str, database: str) -> None:
    store = Store(dsn, database)
    try:
        # A stop-loss close at the broker: no order of ours behind it.
        stop = new_fill(
            None, 9001, 1.0795, 0.2, side=Side.SELL, entry=DealEntry.OUT, reason=DealReason.SL, commission=-0.7,
        )  # fmt: skip
        store.record_fills([stop], "test/positions")
        store.record_fills([stop], "test/positions")
        rows = _one(store, "SELECT count(), any(reason), any(entry), any(isNull(order_id)) FROM {db}.executions WHERE deal = 9001")
        assert rows == [(1, "sl", "out", 1)], rows
        assert store.fills_with_stops() == [(stop, None, None)]
        store.record_fills([], "test/positions")  # nothing to write is fine
    finally:
        store.close()


def fills_in_time_order_with_their_stops(dsn: str, database: str) -> None:
    store = Store(dsn, database)
    try:
        first = filled_lifecycle(new_order(stop_loss=1.07, take_profit=1.1), deal=10001)
        second = filled_lifecycle(new_order(stop_loss=None, take_profit=None), deal=10002)
        close = new_fill(None, 10003, 1.1, 0.2, side=Side.SELL, entry=DealEntry.OUT, reason=DealReason.TP)
        store.record_fills([close], "test/positions")  # written first, happened last
        store.record_events(second)
        store.record_events(first)
        got = store.fills_with_stops()
        assert got == [(first[2].fill, 1.07, 1.1), (second[2].fill, None, None), (close, None, None)], got
    finally:
        store.close()


def positions_latest_write_wins(dsn: str, database: str) -> None:
    store = Store(dsn, database)
    try:
        opened_at = _now() - timedelta(hours=3)
        order_id = uuid.uuid4()
        position = Position(
            position_id=position_id_for(4242), ticket=4242, opened_at=opened_at, symbol="XAUUSD",
            side=PositionSide.SHORT, quantity=0.5, entry_price=2350.5, entry_order_id=order_id,
            stop_loss=2360.0, take_profit=2330.0, current_price=2349.0, unrealized_pnl=75.0,
            commission_total=-3.5, deals=(1,), updated_at=opened_at,
        )  # fmt: skip
        closed = msgspec.structs.replace(
            position, position_status=PositionStatus.CLOSED, exit_price=2330.0, exit_reason=ExitReason.TAKE_PROFIT,
            closed_at=_now(), realized_pnl=1025.0, unrealized_pnl=0.0, r_multiple=2.16, holding_period_hours=3.0,
            closed_quantity=0.5, exit_order_id=None, deals=(1, 2), updated_at=_now(),
        )  # fmt: skip
        # Found at the broker: no order of ours, no stops.
        other = msgspec.structs.replace(
            position, position_id=position_id_for(4243), ticket=4243, side=PositionSide.LONG, entry_order_id=None,
            stop_loss=None, take_profit=None, updated_at=None,
        )  # fmt: skip
        store.record_positions([closed])  # the later write arrives first
        store.record_positions([position, other])
        store.record_positions([])
        rows = _one(
            store,
            "SELECT ticket, side, position_status, exit_reason, exit_price, realized_pnl, closed_quantity, "
            "entry_order_id, exit_order_id, r_multiple, stop_loss, take_profit FROM {db}.positions ORDER BY ticket",
        )
        assert rows == [
            (4242, "short", "closed", "take_profit", 2330.0, 1025.0, 0.5, order_id, None, 2.16, 2360.0, 2330.0),
            (4243, "long", "open", None, None, 0.0, 0.0, uuid.UUID(int=0), None, None, 0.0, 0.0),
        ], rows
        assert _one(store, "SELECT count() FROM {db}.positions") == [(2,)]
    finally:
        store.close()


def approved_signals_in_trading_signals(dsn: str, database: str) -> None:
    store = Store(dsn, database)
    try:
        statuses = {uuid.uuid4(): status for status in ("approved", "rejected", "pending", "approved")}
        rows = [trading_signal_row(sid, status) for sid, status in statuses.items()]
        store.client.insert(f"{database}.trading_signals", [list(row.values()) for row in rows], column_names=list(rows[0]))
        approved = {sid for sid, status in statuses.items() if status == "approved"}
        assert store.signals_in_trading_signals(list(statuses)) == approved
        # Many ids: over HTTP, clickhouse-connect moves long parameters into a form body.
        many = [uuid.uuid4() for _ in range(300)] + list(statuses)
        assert store.signals_in_trading_signals(many) == approved
        assert store.signals_in_trading_signals([uuid.uuid4()]) == set()
    finally:
        store.close()


def views_and_trading_signals_are_upstreams_shape(dsn: str, database: str) -> None:
    """Upstream's DDL, verbatim, in a database of its own: our views start with its columns,
    names and types, in its order; trading_signals is its table exactly."""
    store = Store(dsn, database)
    theirs = f"{database}_upstream"
    try:
        store.client.command(f"CREATE DATABASE {theirs}")
        for ddl in (ORDERS_DDL, POSITIONS_DDL, TRADING_SIGNALS_DDL):
            store.client.command(ddl.replace("suho_analytics.", f"{theirs}.").rstrip().rstrip(";"))
        for table in ("orders", "positions"):
            upstream = columns(store.client, f"{theirs}.{table}")
            ours = columns(store.client, f"{database}.{table}")
            assert ours[: len(upstream)] == upstream, (table, ours)
        assert columns(store.client, f"{database}.executions")[:7] == [
            ("execution_id", "UUID"), ("order_id", "Nullable(UUID)"), ("fill_price", "Float64"), ("fill_quantity", "Float64"),
            ("slippage", "Nullable(Float64)"), ("commission", "Float64"), ("execution_timestamp", "DateTime64(3, 'UTC')"),
        ]  # fmt: skip
        assert [name for name, _ in columns(store.client, f"{database}.orders")][21:25] == ["state", "entry_price", "fill_price", "slippage_pips"]
        show = {db: _one(store, f"SHOW CREATE TABLE {db}.trading_signals")[0][0].replace(db, "db") for db in (database, theirs)}
        assert show[database] == show[theirs], show
    finally:
        store.client.command(f"DROP DATABASE IF EXISTS {theirs}")
        store.close()


def migrated_from_001_ends_as_fresh(dsn: str, database: str) -> None:
    """A deployment on 001 (the service's tables under upstream's names, a development
    trading_signals of its own shape) is carried over: same schema as a fresh database, its
    rows kept, its filled orders given their slippage in pips."""
    client = connect(dsn, database)
    try:
        migrations()[0].apply(client, database)  # (unlogged: running it again is a no-op)
        events = filled_lifecycle(new_order(), deal=11001)
        before_002 = [column for column in ORDER_COLUMNS if column not in ("slippage_pips", "signal_fingerprint")]
        for event in events:  # one version per insert, as the recorder wrote them
            row = dict(zip(ORDER_COLUMNS, _order_row(event), strict=True))
            client.insert(f"{database}.orders", [[row[column] for column in before_002]], column_names=before_002)
        fill = events[2].fill
        assert fill is not None
        client.insert(f"{database}.executions", [_execution_row(fill, ACTOR, _now())], column_names=EXECUTION_COLUMNS)
        position = Position(
            position_id=position_id_for(fill.position_ticket), ticket=fill.position_ticket, opened_at=fill.execution_timestamp,
            symbol="EURUSD", side=PositionSide.LONG, quantity=0.2, entry_price=1.0853, entry_order_id=fill.order_id,
        )  # fmt: skip
        client.insert(f"{database}.positions", [_position_row(position)], column_names=POSITION_COLUMNS)
        dev_signal = uuid.uuid4()
        client.command(
            f"INSERT INTO {database}.trading_signals (signal_id, symbol, timeframe, signal_type, risk_approval_status, "
            f"signal_timestamp, created_at, model_version) VALUES ('{dev_signal}', 'EURUSD', 'H1', 'hold', 'approved', now64(), now64(), 'dev')"
        )
    finally:
        client.close()

    store = Store(dsn, database)  # 002 and the schema, as the next start of the service does
    fresh = Store(dsn, f"{database}_fresh")
    try:
        assert schema(store.client, database) == schema(fresh.client, f"{database}_fresh")
        rows = _one(store, "SELECT order_id, state, version, slippage_pips, signal_fingerprint FROM {db}.orders")
        assert rows == [(events[0].order_id, "FILLED", 3, 3.0, "")], rows
        assert _one(store, "SELECT deal, slippage_pips FROM {db}.executions") == [(11001, 3.0)]
        assert _one(store, "SELECT ticket, entry_order_id, stop_loss FROM {db}.positions") == [(fill.position_ticket, fill.order_id, 0.0)]
        assert store.fills_with_stops() == [(fill, 1.08, 1.095)]
        assert _one(store, "SELECT signal_id, signal_type FROM {db}.trading_signals_001") == [(dev_signal, "hold")]
        assert _one(store, "SELECT count() FROM {db}.trading_signals") == [(0,)]
        assert [row[0] for row in _one(store, "SELECT version FROM {db}.schema_migrations ORDER BY version")] == [1, 2]
    finally:
        fresh.close()
        store.close()


def schema_is_repaired(dsn: str, database: str) -> None:
    """What is dropped by hand comes back: at the next start whatever the migration log says,
    and a table the service writes at once, on the write that finds it missing."""
    store = Store(dsn, database)
    vandal = connect(dsn, database)
    try:
        created = schema(store.client, database)
        first = filled_lifecycle(new_order(), deal=12001)
        store.record_events(first)
        vandal.command(f"DROP TABLE {database}.order_events")
        vandal.command(f"DROP TABLE {database}.execution_records")
        second = filled_lifecycle(new_order(), deal=12002)
        store.record_events(second)  # repaired and written, not retried forever
        assert store.history(second[0].order_id) == second
        assert _one(store, "SELECT deal FROM {db}.executions") == [(12002,)]
        assert _one(store, "SELECT count() FROM {db}.orders") == [(2,)]

        for name in DECLARED:  # everything, views included, dropped by hand
            vandal.command(f"DROP {'VIEW' if name in ('orders', 'executions', 'positions') else 'TABLE'} {database}.{name}")
        store.close()
        store = Store(dsn, database)  # the next start: nothing to migrate, the schema is repaired
        assert schema(store.client, database) == created  # service/schema.sql is what the migrations make
        store.record_events(filled_lifecycle(new_order(), deal=12003))
        assert _one(store, "SELECT count() FROM {db}.orders") == [(1,)]
    finally:
        vandal.close()
        store.close()


def queries_from_outside_are_read_only(dsn: str, database: str) -> None:
    """The sql command's path: one statement, ClickHouse's readonly, the service's database."""
    store = Store(dsn, database)
    try:
        events = filled_lifecycle(new_order(), deal=13001)
        store.record_events(events)
        order_id = events[0].order_id
        assert store.read_only("SELECT count() FROM orders", {}) == (["count()"], [(1,)])
        assert store.read_only("SELECT state FROM orders WHERE order_id = {id:UUID};\n", {"id": order_id})[1] == [("FILLED",)]
        assert store.read_only("SELECT state FROM orders WHERE order_id = %(id)s", {"id": str(order_id)})[1] == [("FILLED",)]
        refused = {
            "SELECT 1; DROP TABLE positions": "Multi-statements are not allowed",
            "DROP TABLE positions": "READONLY",
            f"INSERT INTO {database}.order_events (event_id) VALUES ('x')": "READONLY",
            "CREATE TABLE t (x UInt8) ENGINE = Memory": "READONLY",
            "SELECT * FROM file('/etc/hostname', 'LineAsString')": "READONLY",
            "INSERT INTO FUNCTION file('leak.csv', 'CSV') SELECT 1": "READONLY",
            "SELECT 1 SETTINGS readonly = 0": "READONLY",
        }
        for sql, reason in refused.items():
            with pytest.raises(DatabaseError) as caught:
                store.read_only(sql, {})
            assert reason in str(caught.value), (sql, caught.value)
        assert _one(store, "EXISTS TABLE {db}.positions") == [(1,)]
        assert store.read_only("SELECT count() FROM orders", {}) == (["count()"], [(1,)])  # still answering
        store.record_events(filled_lifecycle(new_order(), deal=13002))  # and the writer still writes
        assert store.read_only("SELECT count() FROM orders", {})[1] == [(2,)]
    finally:
        store.close()


SCENARIOS: list[Scenario] = [
    migrations_run_twice,
    events_round_trip,
    latest_order_version_wins,
    rewritten_events_collapse,
    deal_recorded_twice_is_one_row,
    fills_in_time_order_with_their_stops,
    positions_latest_write_wins,
    approved_signals_in_trading_signals,
    views_and_trading_signals_are_upstreams_shape,
    migrated_from_001_ends_as_fresh,
    schema_is_repaired,
    queries_from_outside_are_read_only,
]


# ---- the two DSNs --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def http_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server DSN on tests/clickhouse_http.py, on its own tmp path; stopped (by pid) at the end."""
    with clickhouse_front(tmp_path_factory.mktemp("clickhouse-http")) as address:
        yield f"http://default:@{address}/suho_analytics"


def _run_embedded(scenario: Scenario, dsn: str, database: str) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, __file__, scenario.__name__, dsn, database],
        check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"{scenario.__name__} on {dsn} failed:\n{proc.stdout}{proc.stderr}", pytrace=False)


@pytest.fixture(params=["embedded", "http"])
def run(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[Scenario], None]:
    if request.param == "embedded":
        dsn = f"chdb://{tmp_path / 'chdb'}"  # chdb:///tmp/...: a fresh engine path per test
        return lambda scenario: _run_embedded(scenario, dsn, "suho_analytics")
    dsn = request.getfixturevalue("http_dsn")
    assert "chdb" not in sys.modules, "the HTTP path must not load chdb into the pytest process"
    database = f"suho_analytics_{uuid.uuid4().hex[:8]}"  # one front per module, a database per test
    return lambda scenario: scenario(dsn, database)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__)
def test_store(run: Callable[[Scenario], None], scenario: Scenario) -> None:
    run(scenario)


def test_http_front_speaks_clickhouse_errors(http_dsn: str) -> None:
    """What the front answers on failure is what clickhouse-connect expects from a server."""
    import clickhouse_connect
    from clickhouse_connect.driver.exceptions import DatabaseError

    client = clickhouse_connect.get_client(dsn=http_dsn, database="default")
    try:
        assert client.ping()
        with pytest.raises(DatabaseError) as caught:
            client.query("SELECT * FROM default.no_such_table")
        assert caught.value.code == 60 and "UNKNOWN_TABLE" in str(caught.value)
        with pytest.raises(DatabaseError) as caught:
            client.command("SELEC 1")
        assert caught.value.code == 62
    finally:
        client.close()
    with pytest.raises(DatabaseError) as caught:
        clickhouse_connect.get_client(dsn=http_dsn.replace("default:@", "intruder:secret@"))
    assert caught.value.code == 516


if __name__ == "__main__":  # the embedded variant: python tests/test_store.py SCENARIO DSN DATABASE
    name, dsn_arg, database_arg = sys.argv[1:4]
    {scenario.__name__: scenario for scenario in SCENARIOS}[name](dsn_arg, database_arg)
