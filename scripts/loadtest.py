"""Drive a running server on loopback at several concurrency levels, for a bounded time and count.

    python scripts/loadtest.py --url http://127.0.0.1:8000 --image part.png --concurrency 1,8,32 --duration 10

Prints, per level: requests, throughput (req/s), p50/p99 latency (ms) and the error count. Only loopback
addresses are accepted: this is a tool for measuring your own server on your own machine.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import aiohttp
import httpx
import numpy as np


def check_loopback(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        ok = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = False
    if not ok:
        sys.exit(f"error: {url} is not a loopback address (127.0.0.0/8, ::1 or localhost)")


def free_port() -> int:
    """A free TCP port on loopback."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, process=None, timeout: float = 120.0, log_file=None) -> None:
    """Poll GET /readyz until 200; exit with a clear message if `process` dies or time runs out. `log_file`: where the
    server's output goes; its last lines (the server's own error) are part of the message."""
    def said() -> str:
        if log_file is None:
            return ""
        try:
            lines = open(log_file, errors="replace").read().strip().splitlines()
        except OSError:
            return ""
        return ("; the server said:\n" + "\n".join(lines[-20:])) if lines else "; the server printed nothing"

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if process is not None and process.poll() is not None:
            sys.exit(f"error: the server exited (code {process.returncode}) before it was ready{said()}")
        time.sleep(0.2)
    sys.exit(f"error: the server at {url} was not ready after {timeout:.0f} s{said()}")


async def run_level(url: str, payload: bytes, concurrency: int, duration: float, max_requests: int,
                    content_type: str = "image/png", api_key: str | None = None) -> dict:
    """`concurrency` workers send the image back to back until `duration` s or `max_requests` are spent.

    aiohttp rather than httpx: its C parser costs the machine under test about half the CPU per request,
    and on a small machine the load generator shares the cores with the server it measures."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    deadline = time.perf_counter() + duration
    headers = {"content-type": content_type}
    if api_key:
        headers["x-api-key"] = api_key
    connector = aiohttp.TCPConnector(limit=concurrency)

    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        async def worker() -> None:
            nonlocal sent
            while time.perf_counter() < deadline and sent < max_requests:
                sent += 1
                start = time.perf_counter()
                try:
                    async with session.post(f"{url}/predict", data=payload, headers=headers) as response:
                        await response.read()
                        if response.status != 200:
                            errors[str(response.status)] = errors.get(str(response.status), 0) + 1
                            continue
                except (aiohttp.ClientError, TimeoutError) as exc:
                    errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
                    continue
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    ms = np.array(latencies) * 1000 if latencies else np.array([float("nan")])
    return {"concurrency": concurrency, "requests": sent, "ok": len(latencies), "errors": sum(errors.values()),
            "error_kinds": errors, "seconds": elapsed, "throughput": len(latencies) / elapsed,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--image", type=Path, required=True, help="a PNG/JPEG/BMP image to send")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels (default 1,8,32)")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per level (default 10)")
    parser.add_argument("--max-requests", type=int, default=5000, help="requests per level at most (default 5000)")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = parser.parse_args()
    check_loopback(args.url)
    payload = args.image.read_bytes()
    kind = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".bmp": "image/bmp"}.get(args.image.suffix.lower(), "image/png")
    results = []
    print(f"{'conc':>5} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for level in (int(c) for c in args.concurrency.split(",")):
        r = asyncio.run(run_level(args.url, payload, level, args.duration, args.max_requests, kind, args.api_key))
        results.append(r)
        print(f"{level:>5} {r['requests']:>9} {r['throughput']:>8.1f} {r['p50_ms']:>8.1f} {r['p99_ms']:>8.1f} "
              f"{r['errors']:>7}{'  ' + json.dumps(r['error_kinds']) if r['errors'] else ''}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
