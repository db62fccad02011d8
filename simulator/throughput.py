"""``python -m simulator.throughput [--orders N]``: market orders per second through the paper broker.

Starts a private nats-server and ``python -m simulator`` as a separate process (as deployed,
no added latency), publishes N market orders with JetStream like the service does, and times
from the first publish until the last fill has arrived. Both processes are stopped by pid.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from nats.aio.msg import Msg

from messages.broker import BrokerError, BrokerFill
from messages.codec import decode, encode
from messages.enums import Mt5OrderType
from simulator.client import SimClient, order_request
from simulator.local_nats import LocalNats

SYMBOLS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD")


async def measure(url: str, orders: int) -> dict[str, float]:
    """Submit ``orders`` market orders to the simulator at ``url``; time until each has its outcome."""
    client = await SimClient.connect(url)
    deadline = time.monotonic() + 15
    while True:  # until the simulator answers (and so has made its streams)
        try:
            await client.control()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise RuntimeError("the simulator did not come up") from None
            await asyncio.sleep(0.05)
    requests = [
        order_request(Mt5OrderType.BUY if n % 2 else Mt5OrderType.SELL, 0.01, symbol=SYMBOLS[n % len(SYMBOLS)]) for n in range(orders)
    ]
    sent: dict[uuid.UUID, float] = {}
    latencies: list[float] = []
    rejected: list[BrokerError] = []
    done = asyncio.Event()

    async def on_outcome(msg: Msg) -> None:
        outcome = decode(msg.data, BrokerError if msg.subject.startswith("broker.error.") else BrokerFill)
        if isinstance(outcome, BrokerError):
            rejected.append(outcome)
        if outcome.order_id in sent:
            latencies.append(time.perf_counter() - sent.pop(outcome.order_id))
        if len(latencies) == orders:
            done.set()

    # Core subscriptions: with no faults each order gives exactly one fill (0.01 lots) or error.
    await client.nc.subscribe("broker.fill.>", cb=on_outcome)
    await client.nc.subscribe("broker.error.>", cb=on_outcome)
    await client.nc.flush()
    started = time.perf_counter()
    futures = []
    for request in requests:
        sent[request.order_id] = time.perf_counter()
        futures.append(
            await client.js.publish_async(
                f"orders.submitted.{request.symbol}", encode(request), headers={"Nats-Msg-Id": str(request.order_id)}
            )
        )
    await asyncio.gather(*futures)
    submitted = time.perf_counter() - started
    await asyncio.wait_for(done.wait(), timeout=120)
    elapsed = time.perf_counter() - started
    await client.close()
    latencies.sort()
    return {
        "orders": orders,
        "submit_s": submitted,
        "elapsed_s": elapsed,
        "per_second": orders / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "rejected": len(rejected),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m simulator.throughput", description=__doc__)
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--sim-log-level", default="INFO", help="the simulator's log level (its log goes to a file)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="sim-throughput-") as directory, LocalNats(Path(directory)) as url:
        log_path = Path(directory) / "simulator.log"
        with open(log_path, "wb") as log_file:
            simulator = subprocess.Popen(
                # A balance large enough that margin never refuses an order of the run.
                [sys.executable, "-m", "simulator", "--nats-url", url, "--tick-ms", "0", "--balance", "1e9", "--log-level", args.sim_log_level],
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
            try:
                result = asyncio.run(measure(url, args.orders))
            finally:
                simulator.terminate()
                simulator.wait(timeout=10)
    print(
        f"{result['orders']} market orders (JetStream in, one fill each out, simulator log {args.sim_log_level}): "
        f"all done in {result['elapsed_s']:.2f} s -> {result['per_second']:.0f} orders/s; "
        f"submitting took {result['submit_s']:.2f} s; publish-to-fill p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms; "
        f"rejected {result['rejected']:.0f}"
    )


if __name__ == "__main__":
    main()
