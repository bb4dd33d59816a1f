"""Load generators: wrk for throughput (closed loop, keep-alive connections), a small asyncio
HTTP/1.1 client for exact request counts, fixed-rate latency and, if wrk is missing, throughput.

The asyncio client speaks just enough HTTP/1.1 for these services: keep-alive, Content-Length
bodies. It runs in this process, so as a throughput client it is slower than the servers it
measures: the bench says so loudly when it has to fall back to it.
"""

from __future__ import annotations

import asyncio
import json
import re
import resource
import shutil
import statistics
import subprocess
import tempfile
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

WRK_THREADS = 1  # leaves the other core of a 2-core machine to the server
CONNECTIONS = 32
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:\s*(\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class Target:
    """One request, sent again and again: ``POST url`` with a JSON body and headers."""

    url: str
    body: Mapping[str, object]
    headers: Mapping[str, str]

    @property
    def host_port(self) -> tuple[str, int]:
        parts = urlsplit(self.url)
        return parts.hostname or "127.0.0.1", parts.port or 80

    def raw(self) -> bytes:
        parts = urlsplit(self.url)
        payload = json.dumps(self.body).encode()
        head = [f"POST {parts.path} HTTP/1.1", f"Host: {parts.netloc}"]
        head += ["Content-Type: application/json", f"Content-Length: {len(payload)}"]
        head += [f"{name}: {value}" for name, value in self.headers.items()]
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload


@dataclass(frozen=True)
class Throughput:
    requests: int
    seconds: float
    errors: int
    client_cpu_seconds: float | None = None  # wrk's own CPU time (user + system)

    @property
    def rps(self) -> float:
        """Answers other than errors, per second."""
        return (self.requests - self.errors) / self.seconds


def wrk_version() -> str | None:
    """``wrk 4.1.0`` or the like, or None without wrk."""
    path = shutil.which("wrk")
    if path is None:
        return None
    version = subprocess.run([path, "-v"], capture_output=True, text=True, check=False)  # noqa: S603
    banner = version.stdout
    match = re.search(r"wrk (\S+)", banner)
    return f"wrk {match.group(1)}" if match else "wrk"


_WRK_SCRIPT = """
wrk.method = "POST"
wrk.body = [==[{body}]==]
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("BENCH %d %d %d\\n", summary.requests, summary.duration,
    e.connect + e.read + e.write + e.status + e.timeout))
end
"""


def wrk(target: Target, seconds: int, connections: int = CONNECTIONS) -> Throughput:
    """``wrk -t1 -c<connections> -d<seconds>s`` with the target's body and headers."""
    headers = {"Content-Type": "application/json", **target.headers}
    lines = "\n".join(f'wrk.headers["{k}"] = [==[{v}]==]' for k, v in headers.items())
    script = _WRK_SCRIPT.format(body=json.dumps(target.body), headers=lines)
    options = [f"-t{WRK_THREADS}", f"-c{connections}", f"-d{seconds}s"]
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as file:
        file.write(script)
        file.flush()
        before = _children_cpu()
        output = subprocess.run(  # noqa: S603 - our own arguments
            [shutil.which("wrk") or "wrk", *options, "-s", file.name, target.url],
            capture_output=True,
            text=True,
            check=True,
            timeout=seconds + 60,
        ).stdout
        cpu = _children_cpu() - before
    match = re.search(r"^BENCH (\d+) (\d+) (\d+)$", output, re.MULTILINE)
    if match is None:
        raise RuntimeError(f"wrk printed no summary:\n{output}")
    requests, micros, errors = (int(g) for g in match.groups())
    return Throughput(requests, micros / 1e6, errors, cpu)


def _children_cpu() -> float:
    """CPU seconds of this process' finished children: around one wrk run, wrk's."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- the asyncio client ----------------------------------------------------------------------


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer

    @classmethod
    async def open(cls, target: Target) -> Connection:
        reader, writer = await asyncio.open_connection(*target.host_port)
        return cls(reader, writer)

    async def send(self, raw: bytes) -> int:
        """One request on this kept-alive connection; the status (the body is read and
        dropped)."""
        self._writer.write(raw)
        head = await self._reader.readuntil(b"\r\n\r\n")
        length = _CONTENT_LENGTH.search(head)
        if length is None:
            raise RuntimeError(f"an answer without Content-Length: {head!r}")
        await self._reader.readexactly(int(length.group(1)))
        return int(head[9:12])

    def close(self) -> None:
        self._writer.close()


async def _closed_loop(
    target: Target, connections: int, count: int | None, seconds: float | None
) -> Throughput:
    raw = target.raw()
    pool = [await Connection.open(target) for _ in range(connections)]
    sent = errors = 0
    start = time.perf_counter()
    stop_at = start + seconds if seconds is not None else float("inf")

    async def worker(connection: Connection) -> None:
        nonlocal sent, errors
        while (count is None or sent < count) and time.perf_counter() < stop_at:
            sent += 1
            if await connection.send(raw) >= 400:
                errors += 1

    await asyncio.gather(*(worker(c) for c in pool))
    elapsed = time.perf_counter() - start
    for connection in pool:
        connection.close()
    return Throughput(sent, elapsed, errors)


def closed_loop(
    target: Target,
    *,
    connections: int = CONNECTIONS,
    count: int | None = None,
    seconds: float | None = None,
) -> Throughput:
    """``count`` requests, or as many as fit in ``seconds``, over ``connections`` kept-alive
    connections each sending its next request as soon as the last is answered."""
    return asyncio.run(_closed_loop(target, connections, count, seconds))


@dataclass(frozen=True)
class Latency:
    rate: float
    seconds: float
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float
    max_ms: float


async def _open_loop(target: Target, rate: float, seconds: float) -> Latency:
    raw = target.raw()
    idle = deque([await Connection.open(target) for _ in range(8)])
    latencies: list[float] = []
    errors = 0
    start = time.perf_counter() + 0.1

    async def one(scheduled: float) -> None:
        nonlocal errors
        await asyncio.sleep(scheduled - time.perf_counter())
        # The connection idle longest: all of them stay in use, and none outlives the server's
        # keep-alive timeout unless the rate is low, when it is opened again as any client does.
        connection = idle.popleft() if idle else await Connection.open(target)
        try:
            status = await connection.send(raw)
        except (asyncio.IncompleteReadError, ConnectionError):
            connection.close()
            connection = await Connection.open(target)
            status = await connection.send(raw)
        if status >= 400:
            errors += 1
        # From the time it was due, not the time it went out: a stalled server delays the
        # requests queued behind it, and that delay is latency too (no coordinated omission).
        latencies.append(time.perf_counter() - scheduled)
        idle.append(connection)

    total = round(rate * seconds)
    await asyncio.gather(*(one(start + i / rate) for i in range(total)))
    for connection in idle:
        connection.close()
    cuts = statistics.quantiles(latencies, n=100, method="inclusive")
    return Latency(
        rate, seconds, total, errors, cuts[49] * 1e3, cuts[98] * 1e3, max(latencies) * 1e3
    )


def open_loop(target: Target, rate: float, seconds: float) -> Latency:
    """Requests due at fixed times, ``rate`` a second for ``seconds``, each on an idle
    connection or a new one: latency from when it was due until its answer."""
    return asyncio.run(_open_loop(target, rate, seconds))
