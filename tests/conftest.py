"""Servers and settings for tests.

Every test run gets its own NATS and Kafka on free ports, started through
deploy/local/infra.sh with a private run dir, and stopped (by pid) when the session ends,
whatever happened. They start lazily: a test that asks for nothing pays for nothing, one
that asks for ``nats_settings`` pays for NATS only (well under a second), and Kafka (a few
seconds) starts for the first test that asks for ``kafka_settings``, ``settings`` or ``infra``.

Fixtures (session scoped):
- ``nats_url`` / ``kafka_bootstrap``: the servers, started on first use.
- ``infra``: both, as an :class:`Infra`.
- ``settings``: a Settings on both servers, a private run_dir, a unique stream_prefix and a
  free Thespian admin_port.
- ``nats_settings`` / ``kafka_settings``: the same with only one server started (the other
  address points at a closed port, so using it by mistake fails fast).
- ``offline_settings``: no servers at all (pure logic tests).

With EXEC_TEST_REUSE_INFRA=1 and EXEC_NATS_URL / EXEC_KAFKA_BOOTSTRAP set, those servers are
used instead of starting new ones (e.g. after ``eval "$(deploy/local/infra.sh up)"``).
EXEC_TEST_INFRA_DIR, if set, is where run dirs are made (.ci/run sweeps it for pid files).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

try:  # tests/ is on sys.path while it has no __init__.py (pytest's default import mode)
    from ports import free_port, free_ports
except ImportError:  # pragma: no cover
    from tests.ports import free_port, free_ports
from service.config import Settings, load_settings

__all__ = ["Infra", "free_port", "free_ports"]

REPO = Path(__file__).resolve().parent.parent
INFRA_SH = REPO / "deploy" / "local" / "infra.sh"
# Every nats-server of the tests is the one infra.sh runs (simulator.local_nats reads this too).
os.environ.setdefault("NATS_SERVER", subprocess.run(["bash", str(INFRA_SH), "nats-bin"], check=True, capture_output=True, text=True).stdout.strip())


@dataclass(frozen=True)
class Infra:
    nats_url: str
    kafka_bootstrap: str


def _reuse(var: str) -> str | None:
    if os.environ.get("EXEC_TEST_REUSE_INFRA") == "1":
        return os.environ.get(var) or None
    return None


@pytest.fixture(scope="session")
def infra_run_dir() -> Iterator[Path]:
    """One run dir for this session's servers (pid files, logs, data)."""
    base = os.environ.get("EXEC_TEST_INFRA_DIR")
    if base:
        Path(base).mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="exec-infra-", dir=base or None))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _start(run_dir: Path, server: str, ports: dict[str, int]) -> dict[str, str]:
    env = {**os.environ, "EXEC_RUN_DIR": str(run_dir), **{k: str(v) for k, v in ports.items()}}
    # infra.sh checks the real server answers before it returns (and creates the archive
    # topic); whatever it started is stopped again if it fails.
    proc = subprocess.run(
        ["bash", str(INFRA_SH), "up", server], env=env, capture_output=True, text=True, timeout=240
    )
    if proc.returncode != 0:
        _stop(run_dir, server)
        pytest.fail(f"infra.sh up {server} failed:\n{proc.stderr}", pytrace=False)
    # Last stdout line: export EXEC_NATS_URL=... EXEC_KAFKA_BOOTSTRAP=...
    line = proc.stdout.strip().splitlines()[-1]
    return dict(item.split("=", 1) for item in line.removeprefix("export ").split())


def _stop(run_dir: Path, server: str) -> None:
    env = {**os.environ, "EXEC_RUN_DIR": str(run_dir)}
    subprocess.run(["bash", str(INFRA_SH), "down", server], env=env, capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def nats_url(infra_run_dir: Path) -> Iterator[str]:
    if url := _reuse("EXEC_NATS_URL"):
        yield url
        return
    port, monitor = free_ports(2)
    try:
        exported = _start(infra_run_dir, "nats", {"NATS_PORT": port, "NATS_MONITOR_PORT": monitor})
        yield exported["EXEC_NATS_URL"]
    finally:
        _stop(infra_run_dir, "nats")


@pytest.fixture(scope="session")
def kafka_bootstrap(infra_run_dir: Path) -> Iterator[str]:
    if bootstrap := _reuse("EXEC_KAFKA_BOOTSTRAP"):
        yield bootstrap
        return
    port, controller = free_ports(2)
    try:
        exported = _start(
            infra_run_dir, "kafka", {"KAFKA_PORT": port, "KAFKA_CONTROLLER_PORT": controller}
        )
        yield exported["EXEC_KAFKA_BOOTSTRAP"]
    finally:
        _stop(infra_run_dir, "kafka")


@pytest.fixture(scope="session")
def infra(nats_url: str, kafka_bootstrap: str) -> Infra:
    return Infra(nats_url=nats_url, kafka_bootstrap=kafka_bootstrap)


@pytest.fixture(scope="session")
def stream_prefix() -> Iterator[str]:
    """Unique per run. The streams' subjects are fixed by the wire contract, so two prefixes
    cannot coexist on one server (JetStream refuses overlapping subjects): on a reused
    server, this run's streams are deleted at the end so the next run can declare its own."""
    prefix = f"T{uuid.uuid4().hex[:10].upper()}"
    yield prefix
    if url := _reuse("EXEC_NATS_URL"):
        asyncio.run(_delete_streams(url, prefix))


async def _delete_streams(url: str, prefix: str) -> None:
    import nats

    try:
        nc = await nats.connect(url, allow_reconnect=False, connect_timeout=2)
    except Exception:
        return
    try:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name and info.config.name.startswith(f"{prefix}_"):
                await js.delete_stream(info.config.name)
    finally:
        await nc.close()


def _make_settings(tmp_path_factory: pytest.TempPathFactory, prefix: str, **servers: str) -> Settings:
    # Only the test's own choices: an EXEC_* variable in the caller's environment (say a
    # developer's EXEC_NATS_URL) must not point a test at another server.
    env = {k: v for k, v in os.environ.items() if not k.startswith("EXEC_")}
    return load_settings(
        env,
        run_dir=str(tmp_path_factory.mktemp("run")),
        stream_prefix=prefix,
        admin_port=free_port(),
        **servers,
    )


@pytest.fixture(scope="session")
def settings(tmp_path_factory: pytest.TempPathFactory, infra: Infra, stream_prefix: str) -> Settings:
    return _make_settings(
        tmp_path_factory, stream_prefix,
        nats_url=infra.nats_url, kafka_bootstrap=infra.kafka_bootstrap,
    )


@pytest.fixture(scope="session")
def nats_settings(tmp_path_factory: pytest.TempPathFactory, nats_url: str, stream_prefix: str) -> Settings:
    return _make_settings(
        tmp_path_factory, stream_prefix,
        nats_url=nats_url, kafka_bootstrap=f"127.0.0.1:{free_port()}",
    )


@pytest.fixture(scope="session")
def kafka_settings(
    tmp_path_factory: pytest.TempPathFactory, kafka_bootstrap: str, stream_prefix: str
) -> Settings:
    return _make_settings(
        tmp_path_factory, stream_prefix,
        nats_url=f"nats://127.0.0.1:{free_port()}", kafka_bootstrap=kafka_bootstrap,
    )


@pytest.fixture(scope="session")
def offline_settings(tmp_path_factory: pytest.TempPathFactory, stream_prefix: str) -> Settings:
    return _make_settings(
        tmp_path_factory, stream_prefix,
        nats_url=f"nats://127.0.0.1:{free_port()}", kafka_bootstrap=f"127.0.0.1:{free_port()}",
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The fault-injection suite's table of scenarios, faults and invariants, when it ran."""
    suite = sys.modules.get("test_fault_injection")
    for line in suite.summary_for_terminal() if suite is not None else []:
        terminalreporter.write_line(line)
