"""A throwaway nats-server with JetStream on a free loopback port, for the throughput run and tests.

The binary is ``$NATS_SERVER`` (the tests set it to the one deploy/local/infra.sh runs), else
``nats-server`` on PATH.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class LocalNats:
    """``with LocalNats(tmp_dir) as url:`` starts nats-server, and stops it by its pid on exit."""

    def __init__(self, directory: Path, port: int | None = None) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> str:
        binary = os.environ.get("NATS_SERVER") or shutil.which("nats-server")
        if binary is None:
            raise RuntimeError("nats-server is not installed (Debian: apt-get install nats-server)")
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / "nats-server.log", "ab") as output:
            self._process = subprocess.Popen(
                [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.directory / "jetstream")],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self._process.returncode}; see {self.directory / 'nats-server.log'}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return self.url
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"nats-server did not listen on {self.port} within 10 s")

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, trace: TracebackType | None) -> None:
        self.stop()
