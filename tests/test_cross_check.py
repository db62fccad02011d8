"""With ``cross_check_trading_signals`` on, a signal is executed only if upstream recorded it as
approved in ClickHouse ``trading_signals`` (real chdb, the real service)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import msgspec
import pytest
from harness import REPO, RunningSystem, signal, wait_until

from service.config import Settings

APPROVED, PENDING_UPSTREAM, UNKNOWN_UPSTREAM = (signal("EURUSD", "buy", 0.1, 1.085) for _ in range(3))

# Upstream's rows are written before the service starts: embedded chdb has one owner at a time.
WRITE_ROWS = """
import sys, msgspec
sys.path.insert(0, "tests")
from service.store import Store
from upstream import trading_signal_row
store = Store(sys.argv[1], sys.argv[2])
rows = [trading_signal_row(r["signal_id"], r["status"], symbol=r["symbol"]) for r in msgspec.json.decode(sys.argv[3])]
store.client.insert(f"{sys.argv[2]}.trading_signals", [list(r.values()) for r in rows], column_names=list(rows[0]))
"""


def write_upstream_rows(settings: Settings) -> None:
    rows = [
        {"signal_id": APPROVED["signal_id"], "symbol": "EURUSD", "status": "approved"},
        {"signal_id": PENDING_UPSTREAM["signal_id"], "symbol": "EURUSD", "status": "pending"},
    ]
    subprocess.run(
        [sys.executable, "-c", WRITE_ROWS, settings.dsn, settings.clickhouse_database, msgspec.json.encode(rows).decode()],
        check=True, cwd=REPO,
    )  # fmt: skip


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str) -> Iterator[RunningSystem]:
    running = RunningSystem(
        tmp_path_factory.mktemp("cross_check"), kafka_bootstrap, prepare=write_upstream_rows, cross_check_trading_signals=True
    )
    yield running
    running.close()


def test_only_signals_upstream_approved_are_executed(system: RunningSystem) -> None:
    started = datetime.now(UTC)
    approved = system.send(APPROVED)
    system.send(PENDING_UPSTREAM)  # approved on the wire, but not in upstream's table
    system.send(UNKNOWN_UPSTREAM)
    assert approved is not None
    system.wait_status(approved, "filled")
    letters = wait_until(lambda: (d := system.dead_letters()) and len(d) >= 2 and d, what="two dead letters")
    assert sorted(letter["reason"] for letter in letters) == ["not_in_trading_signals"] * 2
    refused = {uuid.UUID(msgspec.json.decode(letter["payload"])["signal_id"]) for letter in letters}
    assert refused == {uuid.UUID(PENDING_UPSTREAM["signal_id"]), uuid.UUID(UNKNOWN_UPSTREAM["signal_id"])}
    orders = system.query("SELECT count() FROM suho_analytics.orders WHERE created_at >= {t:DateTime64(3, 'UTC')}", t=started)
    assert orders == [(1,)]
