"""A bare aiohttp server answering every GET with one constant body: the floor for serving that many bytes.

`python -m bench.floor_server --bytes N` prints {"url": ...} once listening. It writes the body in
256 KiB slices, as the exporter does, and does nothing else, so scraping it shows what aiohttp and
this machine allow for a body of that size, with no refresh, simulator or rendering around.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
from collections.abc import Sequence

from aiohttp import web

SLICE = 256 * 1024


def app(size: int) -> web.Application:
    """An app serving `size` bytes at every path."""
    body = memoryview(b"# floor\n" + b"x" * max(0, size - 8))

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/plain; version=0.0.4"})
        response.content_length = len(body)
        await response.prepare(request)
        for start in range(0, len(body), SLICE):
            await response.write(body[start : start + SLICE])
        await response.write_eof()
        return response

    application = web.Application()
    application.router.add_get("/{tail:.*}", handler)
    return application


async def serve(size: int) -> None:
    """Serve until SIGTERM/SIGINT."""
    runner = web.AppRunner(app(size), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    sys.stdout.write(json.dumps({"url": f"http://127.0.0.1:{port}"}) + "\n")
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> None:
    """Parse arguments and serve."""
    parser = argparse.ArgumentParser(prog="python -m bench.floor_server")
    parser.add_argument("--bytes", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.bytes))


if __name__ == "__main__":
    main()
