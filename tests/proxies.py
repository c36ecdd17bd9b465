"""Loopback TCP proxies between the engine and a test's PostgreSQL, each on its own event loop."""

import asyncio
import threading
from collections.abc import Callable
from typing import Self

from crucible_dagster.local_postgres import free_port


class LoopbackProxy:
    """Listens on 127.0.0.1, opens a connection upstream per client, and relays in a thread.

    Subclasses say how bytes travel in `relay`; this class owns the loop, the server and the
    teardown, so a test only has to write `with SomeProxy(port) as proxy:`.
    """

    def __init__(
        self,
        upstream_port: int,
        new_loop: Callable[[], asyncio.AbstractEventLoop] = asyncio.new_event_loop,
    ) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self._ready = threading.Event()
        self._loop = new_loop()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        self._ready.wait(5)
        return self

    def __exit__(self, *_: object) -> None:
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def relay(
        self,
        client_r: asyncio.StreamReader,
        client_w: asyncio.StreamWriter,
        server_r: asyncio.StreamReader,
        server_w: asyncio.StreamWriter,
    ) -> None:
        raise NotImplementedError

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._accept, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _close(self) -> None:
        self._server.close()
        relays = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in relays:
            task.cancel()
        await asyncio.gather(*relays, return_exceptions=True)

    async def _accept(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        try:
            await self.relay(client_r, client_w, server_r, server_w)
        finally:
            client_w.close()
            server_w.close()
