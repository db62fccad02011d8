"""Whether the servers the service depends on answer now, asked over the connections the roles
already hold (``execution-service status``). Each check is bounded in time and never raises:
what went wrong is its detail."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from aiokafka import AIOKafkaProducer
from nats.aio.client import Client as NatsClient

from messages.control import ServerCheck
from service.config import Settings

CHECK_TIMEOUT_S = 3.0


def without_credentials(url: str) -> str:
    """``scheme://user:pass@host/...`` -> ``scheme://host/...``: a status is shown and logged."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def _failed(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


async def check_nats(nc: NatsClient | None, settings: Settings) -> ServerCheck:
    target = without_credentials(settings.nats_url)
    if nc is None:
        return ServerCheck("nats", target, False, "not connected yet")
    if not nc.is_connected:
        return ServerCheck("nats", target, False, "disconnected, reconnecting")
    try:
        await nc.flush(timeout=CHECK_TIMEOUT_S)  # a PING answered by the server
    except Exception as exc:
        return ServerCheck("nats", target, False, _failed(exc))
    return ServerCheck("nats", target, True)


async def check_kafka(producer: AIOKafkaProducer | None, settings: Settings) -> ServerCheck:
    target = settings.kafka_bootstrap
    if producer is None:
        return ServerCheck("kafka", target, False, "not connected yet")
    try:
        await asyncio.wait_for(producer.client.fetch_all_metadata(), CHECK_TIMEOUT_S)
    except Exception as exc:
        return ServerCheck("kafka", target, False, _failed(exc))
    return ServerCheck("kafka", target, True)


def check_clickhouse(client: Any, settings: Settings) -> ServerCheck:
    target = without_credentials(settings.clickhouse_dsn) or "embedded chdb in run_dir/chdb"
    if client is None:
        return ServerCheck("clickhouse", target, False, "not opened yet")
    try:
        client.command("SELECT 1")
    except Exception as exc:
        return ServerCheck("clickhouse", target, False, _failed(exc))
    return ServerCheck("clickhouse", target, True)
