"""A lean HTTP/1.1 load generator: N keep-alive connections on one asyncio loop.

The benchmark's clients share the machine's two cores with Kiln, so the load generator must
cost little per request: httpx spends about 0.8 ms of CPU on each, which alone would cap a
two-core box near 2,500 requests/s. This one writes the request bytes itself and parses only
the status line and Content-Length, about 40 µs per request.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit


@dataclass
class Reply:
    status: int
    body: bytes


@dataclass
class LoadResult:
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)


class Connection:
    def __init__(self, host: str, port: int):
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> Reply:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await self.reader.readexactly(length) if length else b""
        if b"connection: close" in head.lower():
            self.writer.close()
            self.writer = None
        return Reply(status, body)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def post_request(url: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    host = urlsplit(url).netloc
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", "Content-Type: application/json",
             f"Content-Length: {len(body)}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def run_load(url: str, requests: int, clients: int, make_request: Callable[[int], bytes],
             keep_bodies: bool = False) -> LoadResult:
    """Send `requests` requests over `clients` connections, each waiting for its reply."""
    parts = urlsplit(url)
    result = LoadResult(seconds=0.0)

    async def client(conn: Connection, counter: list[int]) -> None:
        while counter[0] < requests:
            i = counter[0]
            counter[0] += 1
            raw = make_request(i)
            start = time.perf_counter()
            reply = await conn.request(raw)
            result.latencies_ms.append((time.perf_counter() - start) * 1000)
            result.statuses[reply.status] = result.statuses.get(reply.status, 0) + 1
            if keep_bodies:
                result.bodies.append(reply.body)

    async def main() -> None:
        conns = [Connection(parts.hostname, parts.port or 80) for _ in range(clients)]
        counter = [0]
        start = time.perf_counter()
        try:
            await asyncio.gather(*(client(c, counter) for c in conns))
        finally:
            result.seconds = time.perf_counter() - start
            for c in conns:
                c.close()

    asyncio.run(main())
    return result
