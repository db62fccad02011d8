"""``python -m simulator [--flag value ...]``: run the paper broker until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal

from simulator.config import SimConfig, load_config
from simulator.connector import Connector


async def run(config: SimConfig) -> None:
    connector = Connector(config)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await connector.start()
    await stop.wait()
    await connector.stop()


def main() -> None:
    config = load_config()
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)-7s %(message)s")
    asyncio.run(run(config))


if __name__ == "__main__":
    main()
