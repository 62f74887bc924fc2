"""A TCP proxy between the code under test and PostgreSQL, for network faults.

`blackhole()` keeps every socket open but forwards nothing, which is what a dead NAT or a
partitioned network looks like from the client: no RST, no FIN, just silence. The proxy
runs its own event loop in a thread so sync and async code can use it alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading


class Proxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.blackholed = threading.Event()
        self.bytes_to_server = 0  # what clients sent: a round trip shows up here
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="test-proxy", daemon=True)

    def start(self) -> Proxy:
        self._thread.start()
        self._ready.wait(5)
        return self

    def stop(self) -> None:
        """Close every socket and the loop, so nothing leaks into the next test."""
        self.heal()
        asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def blackhole(self) -> None:
        self.blackholed.set()

    def heal(self) -> None:
        self.blackholed.clear()

    def url(self, dbname: str, user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self._writers.add(up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer, upstream=True),
            self._pipe(up_reader, writer, upstream=False),
            return_exceptions=True,
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, upstream: bool
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await reader.read(65536):
                while self.blackholed.is_set():  # noqa: ASYNC110 - set from another thread
                    await asyncio.sleep(0.05)  # held back: nothing arrives while blackholed
                if upstream:
                    self.bytes_to_server += len(data)
                writer.write(data)
                await writer.drain()
        writer.close()
