"""Upstream's names become views of one row per order, execution and position
(service/schema.sql creates them); the versions the service writes move to tables of their
own; orders gain the signal's fingerprint and their slippage in pips; trading_signals takes
upstream's DDL.

It looks before each step, so a start that died halfway through it runs it again safely.
"""

from __future__ import annotations

from clickhouse_connect.driver.client import Client

from messages.enums import Side
from service.store import order_slippage_pips

RENAMED = {"orders": "order_versions", "executions": "execution_records", "positions": "position_versions"}
# How 001's development trading_signals is told from upstream's (hold is 3 there).
DEV_SIGNAL_TYPE = "Enum8('buy' = 1, 'sell' = 2, 'close_long' = 3, 'close_short' = 4, 'hold' = 5)"


def apply(client: Client, database: str) -> None:
    engines = _engines(client, database)
    for old, new in RENAMED.items():
        if engines.get(old) not in (None, "View") and new not in engines:  # 001's table, not yet moved
            client.command(f"RENAME TABLE {database}.{old} TO {database}.{new}")
            engines[new] = engines.pop(old)
    if "order_versions" in engines:  # else the schema creates it as it is now
        client.command(
            f"ALTER TABLE {database}.order_versions "
            "ADD COLUMN IF NOT EXISTS slippage_pips Nullable(Float64) AFTER expected_price, "
            "ADD COLUMN IF NOT EXISTS signal_fingerprint String AFTER close_position"
        )
        _backfill_slippage(client, database)
    _set_dev_trading_signals_aside(client, database)


def _engines(client: Client, database: str) -> dict[str, str]:
    rows = client.query("SELECT name, engine FROM system.tables WHERE database = {db:String}", parameters={"db": database})
    return dict(rows.result_rows)


def _backfill_slippage(client: Client, database: str) -> None:
    """Orders filled before this migration get their slippage: each one's latest version is
    written again with it (of equal versions, ReplacingMergeTree keeps the last written)."""
    result = client.query(
        f"SELECT * FROM {database}.order_versions FINAL WHERE average_fill_price IS NOT NULL AND slippage_pips IS NULL"
    )
    if not result.result_rows:
        return
    names = list(result.column_names)
    rows = []
    for values in result.result_rows:
        row = dict(zip(names, values, strict=True))
        row["slippage_pips"] = order_slippage_pips(row["symbol"], Side(row["side"]), row["average_fill_price"], row["expected_price"])
        rows.append(list(row.values()))
    client.insert(f"{database}.order_versions", rows, column_names=names)


def _set_dev_trading_signals_aside(client: Client, database: str) -> None:
    """001 created a trading_signals of its own shape for development, under the name upstream
    owns. Upstream's table is never touched; 001's is renamed aside if it holds rows (someone's
    test data, kept), dropped if it is empty (nothing is lost: a fresh database). The schema
    then creates upstream's."""
    types = client.query(
        "SELECT type FROM system.columns WHERE database = {db:String} AND table = 'trading_signals' AND name = 'signal_type'",
        parameters={"db": database},
    ).result_rows
    if types != [(DEV_SIGNAL_TYPE,)]:
        return
    if client.query(f"SELECT count() FROM {database}.trading_signals").result_rows[0][0]:
        client.command(f"RENAME TABLE {database}.trading_signals TO {database}.trading_signals_001")
    else:
        client.command(f"DROP TABLE {database}.trading_signals")
