"""Redis with one key per row, on a real ``redis-server`` this module starts on 127.0.0.1.

The server runs without persistence (``--save ""``, no AOF): the best case for Redis, since
nothing waits for a disk. Writes send one ``MSET`` per batch; gathers one ``MGET`` per batch,
the batched reads a Redis-backed ``Dataset`` would use. Each process opens its own connection.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from typing import Any

import numpy as np

from .base import Format, Reader, Unavailable, byte_view, require

HOST = "127.0.0.1"
#: Seconds the server may take to say it accepts connections.
START_TIMEOUT = 30.0
READY_LINE = b"Ready to accept connections"
#: Keys per command of a scan, so one reply stays a few MiB.
SCAN_KEYS = 4096


def _redis() -> Any:
    return require("redis", "pip install redis")


def key_of(index: int) -> bytes:
    """The key of row ``index``."""
    return b"x:%d" % index


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` child process on a free port of 127.0.0.1, in ``folder``."""

    def __init__(self, folder: str) -> None:
        program = shutil.which("redis-server")
        if program is None:
            raise Unavailable("redis-server is not on PATH (Debian: apt-get install redis-server)")
        _redis()
        os.makedirs(folder, exist_ok=True)
        self.port = free_port()
        command = [
            program, "--bind", HOST, "--port", str(self.port), "--save", "",
            "--appendonly", "no", "--dir", folder, "--protected-mode", "yes",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        self._wait_until_ready()

    def _wait_until_ready(self) -> None:
        """Read the server's log until it accepts connections; raise if it exits or hangs."""
        assert self.process.stdout is not None
        deadline = time.monotonic() + START_TIMEOUT
        log = b""
        while READY_LINE not in log:
            left = deadline - time.monotonic()
            readable, _, _ = select.select([self.process.stdout], [], [], max(0.0, left))
            chunk = os.read(self.process.stdout.fileno(), 65536) if readable else b""
            if not chunk:
                self.stop()
                tail = log.decode(errors="replace").strip().splitlines()[-3:]
                raise Unavailable(f"redis-server did not start: {' / '.join(tail) or 'no output'}")
            log += chunk

    def client(self) -> Any:
        """A new connection."""
        return _redis().Redis(host=HOST, port=self.port)

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL if it lingers) and reap it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


class RedisReader(Reader):
    """One connection of this process."""

    def __init__(self, server: RedisServer, shape: tuple[int, ...]) -> None:
        self.connection = server.client()
        self.shape = shape

    def row(self, index: int) -> np.ndarray:
        value = self.connection.get(key_of(index))
        return np.frombuffer(value, dtype=np.float32).reshape(self.shape)

    def gather(self, indices: np.ndarray, out: np.ndarray) -> None:
        flat, size = byte_view(out)
        values = self.connection.mget([key_of(index) for index in indices.tolist()])
        for offset, value in zip(range(0, len(flat), size), values, strict=True):
            flat[offset : offset + size] = value

    def scan(self, start: int, out: np.ndarray) -> None:
        for first in range(0, len(out), SCAN_KEYS):
            block = out[first : first + SCAN_KEYS]
            self.gather(np.arange(start + first, start + first + len(block)), block)

    def close(self) -> None:
        self.connection.close()


class RedisFormat(Format):
    """Rows as values of one Redis server; :meth:`start` launches it, :meth:`stop` ends it."""

    name = "Redis"
    description = "Redis 127.0.0.1, one key per row, `MSET`/`MGET` per batch, no persistence"
    on_disk = False

    server: RedisServer | None = None

    def start(self) -> None:
        if self.server is None:
            self.server = RedisServer(self.root)

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def _server(self) -> RedisServer:
        if self.server is None:
            raise RuntimeError("Redis: the server is not started")
        return self.server

    def write(self, batches: Iterable[np.ndarray]) -> None:
        connection = self._server().client()
        try:
            connection.flushall()
            index = 0
            for batch in batches:
                connection.mset({key_of(index + i): row.tobytes() for i, row in enumerate(batch)})
                index += len(batch)
        finally:
            connection.close()

    def open(self) -> RedisReader:
        return RedisReader(self._server(), self.workload.shape)

    def files(self) -> list[str]:
        return []

    def remove(self) -> None:
        if self.server is not None:
            connection = self.server.client()
            try:
                connection.flushall()
            finally:
                connection.close()
