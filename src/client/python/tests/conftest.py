"""Fixtures: the real `corecast serve` binary on free ports, and a stub HTTP server that answers
however a test tells it (503s, garbage, silence, a trickle).

The binary is `$CORECAST_BIN`, else the checkout's `target/debug/corecast`; a missing one fails
the tests (they never skip). Each server runs with `--listen 127.0.0.1:0 --api 127.0.0.1:0` and
is read from its `listening ws=ADDR api=ADDR` line, as the Rust tests do (`tests/common`).
"""

from __future__ import annotations

import os
import queue
import socket
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable, Iterator, List, Optional

import pytest

REPO = Path(__file__).resolve().parents[4]
STARTUP_S = 30.0

OPERATOR_KEY = "operator-key-0123456789abcdef"
ACME_KEY = "acme-key-0123456789abcdef"


def corecast_bin() -> Path:
    path = Path(os.environ.get("CORECAST_BIN", REPO / "target" / "debug" / "corecast"))
    if not path.is_absolute():
        path = REPO / path
    if not path.is_file():
        pytest.fail(f"no corecast binary at {path}: run `cargo build` or set CORECAST_BIN")
    return path


class Server:
    """A running `corecast serve`: its `api` base URL and WebSocket address `ws`."""

    def __init__(self, config: Optional[str]) -> None:
        args = [str(corecast_bin()), "serve", "--listen", "127.0.0.1:0", "--api", "127.0.0.1:0"]
        args += ["--shards", "1"]
        self._config = None
        if config is not None:
            self._config = tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False)
            self._config.write(config)
            self._config.close()
            args += ["--config", self._config.name]
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            args, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=self._stderr, text=True
        )
        lines: "queue.Queue[Optional[str]]" = queue.Queue()
        threading.Thread(target=self._drain, args=(lines,), daemon=True).start()
        deadline = time.monotonic() + STARTUP_S
        while True:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError(
                    f"expected `listening ws=.. api=..` from {args} within {STARTUP_S} s; "
                    f"stderr:\n{self.stderr()}"
                )
            if line.startswith("listening "):
                break
        words = line.split()
        assert words[1].startswith("ws=") and words[2].startswith("api="), line
        self.ws = words[1][3:]
        self.api = f"http://{words[2][4:]}"

    def _drain(self, lines: "queue.Queue[Optional[str]]") -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            lines.put(line.strip())
        lines.put(None)

    def stderr(self) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self._config is not None:
            os.unlink(self._config.name)


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    """A server with the defaults: no API keys, `auth = "none"`."""
    running = Server(None)
    yield running
    running.stop()


@pytest.fixture(scope="session")
def keyed_server() -> Iterator[Server]:
    """A server whose control plane needs a key: an operator's and tenant acme's."""
    running = Server(
        f'[[api_keys]]\nkey = "{OPERATOR_KEY}"\n[[api_keys]]\nkey = "{ACME_KEY}"\ntenant = "acme"\n'
    )
    yield running
    running.stop()


Handler = Callable[[socket.socket, int], None]
"""What the stub does with connection number `n` (from 0) once it has read its request."""


class Stub:
    """A one-request-per-connection HTTP server on a free port, run by `handler`.

    `requests` counts the requests read; `stop` (the fixture calls it) ends every connection,
    a hanging one included.
    """

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.requests = 0
        self.heads: List[bytes] = []
        self.stopping = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._threads: List[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(5)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(4096)
                if not chunk:
                    return
                head += chunk
            header, _, body = head.partition(b"\r\n\r\n")
            length = 0
            for line in header.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            while len(body) < length:
                body += conn.recv(4096)
            self.heads.append(header)
            number = self.requests
            self.requests += 1
            self.handler(conn, number)

    def stop(self) -> None:
        self.stopping.set()
        self._accepting.join()
        for thread in self._threads:
            thread.join(timeout=5)
        self._listener.close()


def answer(status: int, body: bytes, headers: str = "") -> bytes:
    """An HTTP/1.1 response that closes its connection."""
    return (
        f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n{headers}\r\n"
    ).encode() + body


@pytest.fixture
def stub() -> Iterator[Callable[[Handler], Stub]]:
    """Starts stubs with the handler given; stops them after the test."""
    started: List[Stub] = []

    def start(handler: Handler) -> Stub:
        running = Stub(handler)
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
