"""Credentials and TLS at both boundaries, and no secret in any log, repr or command line.

NATS: a nats-server with ``authorization`` (user and password, or a token), ``tls`` (it
verifies client certificates too) and JetStream (its store dir is infra.sh's); connect_nats, ensure_streams and a
publish/consume round trip; then the real service and the simulator on it, and a wrong
password refused. ClickHouse: tests/clickhouse_http.py with a user, a password and HTTPS.
The certificates are made here with the openssl command (a private CA, a server certificate
for 127.0.0.1 and a client certificate).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import select
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest
from clickhouse_connect.driver.exceptions import DatabaseError, OperationalError
from urllib3.exceptions import InsecureRequestWarning

from harness import NatsServer, RunningSystem, clickhouse_front, signal

from service.config import ClickHouseAuth, Settings, load_settings
from service.processes import pids
from service.store import Store, connect
from service.streams import connect_nats, ensure_streams

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
PASSWORD = secrets.token_hex(12)  # distinctive, so finding it anywhere is no coincidence


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def _leaf(directory: Path, name: str, usage: str) -> None:
    """``name``.key / ``name``.pem, signed by the CA, for 127.0.0.1 (Go and Python check the
    SAN and the extended key usage)."""
    (directory / f"{name}.ext").write_text(
        f"subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage={usage}\n"
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
        "subjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid\n"
    )
    _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", f"{name}.key",
             "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=directory)  # fmt: skip
    _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-days", "1",
             "-out", f"{name}.pem", "-extfile", f"{name}.ext", cwd=directory)  # fmt: skip


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", "ca.key",
             "-out", "ca.pem", "-days", "1", "-subj", "/CN=execution-service test CA",
             "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=directory)  # fmt: skip
    _leaf(directory, "server", "serverAuth")
    _leaf(directory, "client", "clientAuth")
    return directory


def nats_config(pki: Path, path: Path, authorization: str) -> Path:
    path.write_text(f"""
authorization {{ {authorization} }}
tls {{
  cert_file: "{pki}/server.pem"
  key_file: "{pki}/server.key"
  ca_file: "{pki}/ca.pem"
  verify: true
}}
jetstream: enabled
""")
    return path


def tls(pki: Path) -> dict[str, str]:
    return {"nats_tls_ca_file": str(pki / "ca.pem"), "nats_tls_cert_file": str(pki / "client.pem"), "nats_tls_key_file": str(pki / "client.key")}


# ---- settings -------------------------------------------------------------------------------


def test_secrets_come_from_files_and_never_show(tmp_path: Path) -> None:
    (tmp_path / "nats").write_text(PASSWORD + "\n")
    (tmp_path / "clickhouse").write_text(PASSWORD)
    (tmp_path / "exec.toml").write_text(f'clickhouse_password_file = "{tmp_path / "clickhouse"}"\n')
    settings = load_settings({
        "EXEC_CONFIG": str(tmp_path / "exec.toml"),
        "EXEC_NATS_USER": "svc", "EXEC_NATS_PASSWORD_FILE": str(tmp_path / "nats"),
        "EXEC_NATS_URL": f"nats://svc:{PASSWORD}@127.0.0.1:4222", "EXEC_CLICKHOUSE_DSN": f"https://writer:{PASSWORD}@ch:8443/",
    })  # fmt: skip
    assert settings.nats_password == PASSWORD and settings.clickhouse_password == PASSWORD
    for shown in (repr(settings), str(settings), repr(settings.clickhouse_auth), settings.nats_server):
        assert PASSWORD not in shown
    assert "nats://***@127.0.0.1:4222" in repr(settings)
    with pytest.raises(msgspec.ValidationError, match="not user and token"):
        load_settings({"EXEC_NATS_USER": "svc", "EXEC_NATS_TOKEN": PASSWORD})


# ---- NATS -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["password", "token"])
def test_nats_round_trip_with_credentials_and_tls(kind: str, pki: Path, tmp_path: Path, offline_settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    if kind == "password":
        authorization, good, bad = f'user: svc, password: "{PASSWORD}"', {"nats_user": "svc", "nats_password": PASSWORD}, {"nats_user": "svc", "nats_password": "wrong-" + PASSWORD}
    else:
        authorization, good, bad = f'token: "{PASSWORD}"', {"nats_token": PASSWORD}, {"nats_token": "wrong-" + PASSWORD}
    server = NatsServer(tmp_path / "nats-run", nats_config(pki, tmp_path / "nats.conf", authorization))
    try:
        settings = msgspec.structs.replace(offline_settings, nats_url=server.url, **tls(pki), **good)

        async def round_trip() -> bytes:
            nc, js = await connect_nats(settings)
            try:
                await ensure_streams(js, settings)
                await js.publish("orders.submitted.EURUSD", b"hello", headers={"Nats-Msg-Id": secrets.token_hex(8)})
                sub = await js.pull_subscribe("orders.submitted.EURUSD", durable=f"probe_{kind}")
                [msg] = await sub.fetch(1, timeout=5)
                await msg.ack()
                return msg.data
            finally:
                await nc.close()

        assert asyncio.run(asyncio.wait_for(round_trip(), 30)) == b"hello"

        # A wrong secret, or no client certificate, is refused (connect_nats retries forever,
        # saying why each time).
        no_certificate = msgspec.structs.replace(settings, nats_tls_cert_file="", nats_tls_key_file="")
        for refused, why in ((msgspec.structs.replace(settings, **bad), "Authorization Violation"), (no_certificate, "NATS: ")):
            caplog.clear()
            with pytest.raises(TimeoutError):
                asyncio.run(asyncio.wait_for(connect_nats(refused), 3))
            assert why in caplog.text, caplog.text
            assert PASSWORD not in caplog.text
    finally:
        server.stop()


def test_service_and_simulator_with_credentials_and_tls(pki: Path, tmp_path: Path, kafka_bootstrap: str) -> None:
    """The real service and the simulator on a server with a password and mutual TLS: an order
    goes through, and the password is in no log file, no ``ps`` output and no command line."""
    (tmp_path / "nats-password").write_text(PASSWORD + "\n")
    config = nats_config(pki, tmp_path / "nats.conf", f'user: svc, password: "{PASSWORD}"')
    # The simulator reads its password from a file of its own (the service's is in its env).
    sim_env = {"EXEC_NATS_PASSWORD": "", "SIM_NATS_PASSWORD_FILE": str(tmp_path / "nats-password")}
    system = RunningSystem(tmp_path, kafka_bootstrap, sim_env=sim_env, nats_config=config,
                           nats_user="svc", nats_password=PASSWORD, **tls(pki))  # fmt: skip
    try:
        assert system.nats.url.startswith("nats://") and PASSWORD not in repr(system.settings)
        order_id = system.send(signal("EURUSD", volume=0.1))
        assert order_id is not None
        system.wait_status(order_id, "filled")
        ps = system.cli("ps")
        assert ps.returncode == 0 and PASSWORD not in ps.stdout + ps.stderr

        members = [pid for pid in pids() if _in_session(pid, system.session)]
        assert system.sim is not None
        for pid in [*members, system.sim.pid]:
            with contextlib.suppress(OSError):
                assert PASSWORD.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()

        # A wrong password: the simulator is refused, says so, and names no password.
        wrong = "wrong-" + PASSWORD
        env = {**os.environ, **system.settings.nats_environment(), "EXEC_NATS_PASSWORD": wrong, "SIM_TICK_MS": "0"}
        refused = subprocess.Popen([sys.executable, "-m", "simulator"], env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            said = _read_until(refused, b"retrying", 20)
        finally:
            refused.kill()  # (SIGTERM waits for the start, which retries as long as it is refused)
            refused.wait(10)
        assert b"Authorization Violation" in said, said
        assert wrong.encode() not in said and PASSWORD.encode() not in said
    finally:
        system.close()
    logs = [path for path in system.logs.rglob("*") if path.is_file()]
    assert "execution-service running" in (system.logs / "launcher.log").read_text()
    for path in logs:
        assert PASSWORD not in path.read_text(errors="replace"), path


def _in_session(pid: int, session: int) -> bool:
    with contextlib.suppress(OSError):
        return os.getsid(pid) == session
    return False


def _read_until(proc: subprocess.Popen[bytes], marker: bytes, timeout_s: float) -> bytes:
    assert proc.stdout is not None
    said, deadline = b"", time.monotonic() + timeout_s
    while marker not in said and time.monotonic() < deadline:
        if select.select([proc.stdout], [], [], 0.2)[0]:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            said += chunk
    return said


# ---- ClickHouse -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def https_clickhouse(pki: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """tests/clickhouse_http.py over HTTPS with user ``writer``: its ``https://host:port/``."""
    base = tmp_path_factory.mktemp("clickhouse-https")
    (base / "password").write_text(PASSWORD)
    options = ("--user", "writer", "--password-file", str(base / "password"), "--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key"))
    with clickhouse_front(base, *options) as address:
        yield f"https://{address}/"


def test_store_over_https_with_a_password(https_clickhouse: str, pki: Path) -> None:
    ca = str(pki / "ca.pem")
    store = Store(https_clickhouse, "suho_analytics", ClickHouseAuth(user="writer", password=PASSWORD, ca_file=ca))
    try:
        assert store.client.query("SELECT currentDatabase()").result_rows == [("default",)]
        assert store.reader.query("SELECT count() FROM orders").result_rows == [(0,)]  # the reader logs in too
    finally:
        store.close()
    # The DSN's own user:password, as clickhouse-connect reads it.
    host = https_clickhouse.removeprefix("https://")
    connect(f"https://writer:{PASSWORD}@{host}", "suho_analytics", ClickHouseAuth(ca_file=ca)).close()
    # Without the test CA the certificate is refused, unless the check is turned off.
    with pytest.raises(OperationalError):
        connect(https_clickhouse, "suho_analytics", ClickHouseAuth(user="writer", password=PASSWORD))
    with pytest.warns(InsecureRequestWarning):
        connect(https_clickhouse, "suho_analytics", ClickHouseAuth(user="writer", password=PASSWORD, verify=False)).close()


def test_store_refuses_a_wrong_password(https_clickhouse: str, pki: Path) -> None:
    wrong = "wrong-" + PASSWORD
    with pytest.raises(DatabaseError) as caught:
        connect(https_clickhouse, "suho_analytics", ClickHouseAuth(user="writer", password=wrong, ca_file=str(pki / "ca.pem")))
    assert caught.value.code == 516
    assert wrong not in str(caught.value) and PASSWORD not in str(caught.value)
