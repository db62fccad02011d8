"""The benchmark as CI's smoke check: ``tests/bench.py --smoke`` (about 1.5 minutes on the 2-core
development machine, idle) runs to its end and writes every measure. No timing is judged here
(a loaded CI machine proves nothing about latency); only that it completed, that each measure
and each target's verdict is there, and that the counts are sane: every order offered reached
the broker, was recorded and archived, none lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from bench import MODES, TARGETS

REPO = Path(__file__).resolve().parent.parent


def test_bench_smoke_completes_with_every_measure(tmp_path: Path) -> None:
    output = tmp_path / "bench-smoke.json"
    run = subprocess.run(
        [sys.executable, "tests/bench.py", "--smoke", "--json", str(output)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads(output.read_text())
    assert "error" not in results, results["error_traceback"] + run.stdout[-3000:]
    assert results["mode"] == "smoke"

    for key in ("nats_floor_ms", "signal_to_broker_ms", "fill_to_clickhouse_ms", "fill_to_kafka_ms", "signal_to_filled_ms"):
        assert results[key]["n"] > 0, key
        assert results[key]["p50"] <= results[key]["p99"], key
    for key in ("messages_per_order", "cpu_s_per_1000_orders", "pss_mb_at_1000_resting", "pss_mb_at_target_resting"):
        assert results[key] > 0, key
    assert results["cpu_ms_per_order_by_role"] and results["messages_by_type_per_order"]
    assert results["throughput"]["steps"], "the throughput ladder took no step"
    assert len(results["recovery"]["runs_s"]) == MODES["smoke"]["recoveries"]
    assert results["recovery"]["resting_after"] >= 1000, "open orders lost in the recovery"
    assert results["resting_orders_held"] >= MODES["smoke"]["resting"]

    # Every target judged, with a measured result.
    assert [t["measure"] for t in results["targets"]] == [t[0] for t in TARGETS]
    assert all(t["result"] is not None and t["verdict"] != "not measured" for t in results["targets"]), results["targets"]

    # Every order offered went all the way: to the broker, filled, recorded and archived.
    for phase, counts in results["counts"].items():
        assert counts["offered"] > 0, phase
        assert counts["reached_broker"] == counts["offered"], (phase, counts)
        assert counts["filled_by_broker"] == counts["recorded"] == counts["archived"] == counts["offered"], (phase, counts)
    assert results["losses"] == 0
