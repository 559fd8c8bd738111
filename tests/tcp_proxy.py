"""A TCP proxy that makes a link slow and lossy, for fault tests: delay, dropped connections, outages.

It listens on a loopback port and forwards every connection to ``upstream``, holding each
chunk ``delay`` seconds in each direction (order kept), and dropping a share ``drop`` of the
connections it accepts: such a connection is reset after a random number (0 to 9) of
chunks, so it may die before, during or after a request. :meth:`TcpProxy.reset_all` cuts
every live connection (a link that flaps); :meth:`TcpProxy.stop` and :meth:`TcpProxy.start`
close and reopen the port (the far end is down: connections are refused). Runs its own
asyncio loop in a thread; the counters are read from any thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
from collections.abc import Coroutine
from typing import Any


class TcpProxy:
    """Forwards ``127.0.0.1:<port>`` to ``upstream`` with delay and loss; a context manager."""

    def __init__(
        self, upstream: tuple[str, int], *, delay: float = 0.0, drop: float = 0.0, seed: int = 0
    ) -> None:
        self.upstream = upstream
        self.delay = delay
        self.drop = drop
        self.connections = 0  # accepted
        self.dropped = 0  # reset on purpose
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="tcp-proxy", daemon=True)
        self._thread.start()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])

    # ------------------------------------------------------------------ control (any thread)
    def start(self) -> TcpProxy:
        """Listen (again) on the same port."""
        self._call(self._start())
        return self

    def stop(self) -> None:
        """Close the port and every connection: the far end looks down."""
        self._call(self._stop())

    def reset_all(self) -> None:
        """Cut every live connection (the clients reconnect)."""
        self._call(self._reset_all())

    def close(self) -> None:
        self.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # ----------------------------------------------------------------------- event loop
    async def _start(self) -> None:
        if self._server is None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port, reuse_address=True)

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._reset_all()

    async def _reset_all(self) -> None:
        for writer in list(self._writers):
            _abort(writer)

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        life = self._rng.randrange(10) if self._rng.random() < self.drop else None
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            _abort(client_writer)
            return
        self._writers |= {client_writer, upstream_writer}
        chunks = [0]  # both directions together

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await reader.read(65536):
                    if life is not None and chunks[0] >= life:
                        self.dropped += 1
                        _abort(client_writer)
                        _abort(upstream_writer)
                        return
                    chunks[0] += 1
                    if self.delay:
                        await asyncio.sleep(self.delay)
                    writer.write(data)
                    await writer.drain()
            with contextlib.suppress(OSError):
                writer.close()

        # each direction delays its chunks in order; a chunk's delay does not hold the other way
        await asyncio.gather(pipe(client_reader, upstream_writer), pipe(upstream_reader, client_writer))
        self._writers -= {client_writer, upstream_writer}


def _abort(writer: asyncio.StreamWriter) -> None:
    """Reset a connection (RST, not an orderly close): what a broken link looks like."""
    with contextlib.suppress(OSError, AttributeError):
        writer.transport.abort()
