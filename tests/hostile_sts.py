"""A hostile credential endpoint for the tests (an STS, a credentials URI, a metadata service): raw bytes
on a plain TCP socket on 127.0.0.1, independent of the simulator and of aiohttp's server.

Each request is answered by the current :class:`Behaviour` (swap ``server.behaviour`` at any time): a
whole answer at once, nothing at all (:func:`hang`), an answer dripped a byte at a time (:func:`drip`),
an endless chunked body (:func:`endless`). Every request's first line is kept (``requests``), and
``hung_up`` is set when a client drops a connection the server was still answering, so a test waits
on that event rather than on a clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "HOSTILE_SECRET",
    "HOSTILE_TOKEN",
    "Behaviour",
    "HostileSts",
    "answer",
    "drip",
    "endless",
    "hang",
    "hostile_sts",
    "hostile_sts_thread",
    "json_answer",
    "sts_body",
]

HOSTILE_SECRET = "hostile-secret-0123456789"
HOSTILE_TOKEN = "CAIShostiletoken0123456789"

Behaviour = Callable[["Request", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass(frozen=True)
class Request:
    """What the server read of one request: method, path and the decoded query."""

    method: str
    target: str

    @property
    def query(self) -> dict[str, str]:
        """The query parameters (last value wins)."""
        return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(self.target).query, keep_blank_values=True))


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} X", *(f"{k}: {v}" for k, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def answer(status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> Behaviour:
    """The whole answer at once (``Content-Length`` unless ``headers`` say otherwise)."""
    extra = list(headers or [])
    if not any(k.lower() in ("content-length", "transfer-encoding") for k, _ in extra):
        extra.append(("Content-Length", str(len(body))))

    async def behave(_request: Request, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(status, [("Content-Type", "application/json"), ("Connection", "close"), *extra]))
        writer.write(body)
        await writer.drain()

    return behave


def json_answer(doc: Any, status: int = 200) -> Behaviour:
    """A JSON document as the answer."""
    return answer(status, json.dumps(doc).encode())


def sts_body(
    *,
    access_key_id: Any = "STS.hostile0001",
    secret: Any = HOSTILE_SECRET,
    token: Any = HOSTILE_TOKEN,
    expiration: Any = "2099-01-01T00:00:00Z",
) -> dict[str, Any]:
    """An AssumeRole answer with these fields (any JSON value in each)."""
    return {
        "RequestId": "0F0E0D0C-0B0A-4909-8807-060504030201",
        "AssumedRoleUser": {"Arn": "acs:ram::1:role/r/s", "AssumedRoleId": "1:s"},
        "Credentials": {
            "AccessKeyId": access_key_id,
            "AccessKeySecret": secret,
            "SecurityToken": token,
            "Expiration": expiration,
        },
    }


def hang() -> Behaviour:
    """Read the request, then never answer (until the client gives up or the server stops)."""

    async def behave(_request: Request, reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):  # only the client's hang-up ends the wait
            pass
        raise ConnectionResetError("the client hung up")

    return behave


def drip(payload: bytes, every: float) -> Behaviour:
    """``payload`` (headers and body) one byte every ``every`` seconds: each read sees progress."""

    async def behave(_request: Request, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for i in range(len(payload)):
            writer.write(payload[i : i + 1])
            await writer.drain()
            await asyncio.sleep(every)  # the hostile pace itself, not a synchronisation
        await hang()(_request, reader, writer)

    return behave


def endless(chunk: bytes = b"x" * 65_536) -> Behaviour:
    """A chunked 200 answer that never ends (a client must stop reading at its own cap)."""

    async def behave(_request: Request, _reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(_head(200, [("Transfer-Encoding", "chunked")]))
        while True:
            writer.write(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
            await writer.drain()

    return behave


@dataclass
class HostileSts:
    """The running server: its URL, the behaviour answering now, what it has seen."""

    behaviour: Behaviour
    url: str = ""
    requests: list[Request] = field(default_factory=list)
    hung_up: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    handlers: dict[asyncio.Task[Any], asyncio.StreamWriter] = field(default_factory=dict)

    @property
    def host(self) -> str:
        """``host:port``."""
        return self.url.split("://", 1)[1]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Read one request head (bounded) and answer it with the current behaviour."""
        task = asyncio.current_task()
        if task is not None:
            self.handlers[task] = writer
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            request = Request(method, target)
            self.requests.append(request)
            self.arrived.set()
            await self.behaviour(request, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            self.hung_up.set()
        finally:
            if task is not None:
                self.handlers.pop(task, None)
            writer.close()
            with contextlib.suppress(ConnectionError, asyncio.CancelledError):
                await writer.wait_closed()


@contextlib.asynccontextmanager
async def hostile_sts(behaviour: Behaviour) -> AsyncIterator[HostileSts]:
    """A :class:`HostileSts` on an ephemeral port of 127.0.0.1, closed on the way out."""
    sts = HostileSts(behaviour)
    server = await asyncio.start_server(sts.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sts.url = f"http://127.0.0.1:{port}"
    try:
        yield sts
    finally:
        server.close()
        # Close each connection still answering: its handler then ends on its own (cancelling it would
        # make asyncio's stream callback log the cancellation as an error).
        handlers = list(sts.handlers.items())
        for _task, writer in handlers:
            writer.transport.abort()
        async with asyncio.timeout(30):
            await asyncio.gather(*(task for task, _ in handlers), return_exceptions=True)
        await server.wait_closed()


@contextlib.contextmanager
def hostile_sts_thread(behaviour: Behaviour) -> Iterator[HostileSts]:
    """A :class:`HostileSts` served by its own event loop on a daemon thread, for synchronous tests
    (hypothesis) that run each example's client in a fresh ``asyncio.run``."""
    ready = threading.Event()
    holder: dict[str, Any] = {}
    loop = asyncio.new_event_loop()

    async def main() -> None:
        stop = asyncio.Event()
        async with hostile_sts(behaviour) as sts:
            holder["sts"], holder["stop"] = sts, stop
            ready.set()
            await stop.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(30):
        raise RuntimeError("the hostile endpoint did not start")
    try:
        yield holder["sts"]
    finally:
        loop.call_soon_threadsafe(holder["stop"].set)
        thread.join(30)
        loop.close()
