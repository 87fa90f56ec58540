"""A TCP pass-through on loopback standing in for a Service's endpoints and kube-proxy.

A `url` clientConfig gives the API server one address, where in a cluster it dials a Service
whose endpoints hold only ready pods. This balancer polls each replica's /readyz over TLS and
hands each new connection to a ready replica. A connection, once made, stays with its replica
until one side closes it, as conntrack keeps an established flow on its endpoint after the
endpoint is gone: nothing but `Connection: close` from a draining webhook moves the API
server's keep-alive connection to the other replica.

TLS passes through untouched, so the API server verifies the replica's own certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Sequence
from types import TracebackType
from typing import Any

from .cluster import LOOPBACK


class ReadinessBalancer:
    """Listens on 127.0.0.1, runs its own event loop in a thread; use it as a context manager."""

    def __init__(
        self, ports: Sequence[int], tls: ssl.SSLContext, *, poll_interval: float = 0.1
    ) -> None:
        self.ports = tuple(ports)
        self.ready = dict.fromkeys(self.ports, False)
        self.port = 0
        self._tls = tls
        self._poll_interval = poll_interval
        self._turn = 0
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.port}"

    def __enter__(self) -> ReadinessBalancer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=10)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, LOOPBACK, 0)
        self.port = self._server.sockets[0].getsockname()[1]
        self._tasks.add(asyncio.create_task(self._poll_readiness()))

    async def _stop(self) -> None:
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _poll_readiness(self) -> None:
        while True:
            for port in self.ports:
                self.ready[port] = await self._is_ready(port)
            await asyncio.sleep(self._poll_interval)

    async def _is_ready(self, port: int) -> bool:
        # What the kubelet's readiness probe asks; an answer other than 200 is "not ready".
        try:
            async with asyncio.timeout(1):
                reader, writer = await asyncio.open_connection(LOOPBACK, port, ssl=self._tls)
                writer.write(b"GET /readyz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n")
                status_line = await reader.readline()
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        except (OSError, TimeoutError):
            return False
        return status_line.startswith(b"HTTP/1.1 200 ")

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Kept so that leaving the context ends the connections still open, not only the listener.
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._forward(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        ready = [port for port in self.ports if self.ready[port]]
        if not ready:
            writer.close()
            return

        port = ready[self._turn % len(ready)]
        self._turn += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, port)
        except OSError:
            writer.close()
            return

        await asyncio.gather(_pipe(reader, upstream_writer), _pipe(upstream_reader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction until it ends; closing the other side makes its peer see the end."""
    try:
        while data := await reader.read(64 * 1024):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        writer.close()
