"""Load test of `imgcls serve` on loopback: a second process sends single-image requests from N
concurrent clients for a fixed time, with and without the batching window, and reports requests/s,
p50/p99 latency and errors. Stops by itself.

    python -m bench.serve_load RUN_DIR [--seconds 10] [--clients 16]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import socket
import statistics
import subprocess
import sys
import time

import httpx
import numpy as np
from PIL import Image

from bench.common import save


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def hammer(url: str, seconds: float, clients: int, payload: bytes) -> dict:
    latencies, errors = [], 0
    stop = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            start = time.perf_counter()
            response = await http.post(url, files={"files": ("x.png", payload, "image/png")})
            if response.status_code == 200:
                latencies.append(time.perf_counter() - start)
            else:
                errors += 1

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=clients)) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    latencies.sort()
    return {
        "requests_per_s": round(len(latencies) / seconds, 1),
        "p50_ms": round(1000 * statistics.median(latencies), 1),
        "p99_ms": round(1000 * latencies[int(0.99 * (len(latencies) - 1))], 1),
        "ok": len(latencies),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8)).save(buf, "PNG")
    results = {}
    for name, window in (("no batching", 0), ("batching 5 ms", 5)):
        port = free_port()
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "imgcls",
                "-q",
                "serve",
                args.run_dir,
                "--port",
                str(port),
                "--batch-window-ms",
                str(window),
            ]
        )
        try:
            for _ in range(200):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.1)
            results[name] = asyncio.run(
                hammer(f"http://127.0.0.1:{port}/predict", args.seconds, args.clients, buf.getvalue())
            )
            results[name]["batches_vs_requests"] = httpx.get(f"http://127.0.0.1:{port}/health").json()
        finally:
            server.terminate()
            server.wait(timeout=30)
        r = results[name]
        print(
            f"{name:14s} {r['requests_per_s']:7.1f} req/s  p50 {r['p50_ms']:6.1f} ms  p99 {r['p99_ms']:6.1f} ms  errors {r['errors']}"
        )
    ratio = results["batching 5 ms"]["requests_per_s"] / results["no batching"]["requests_per_s"]
    print(f"batching: {ratio:.2f}x the requests/s")
    save(
        "serve-load",
        {"clients": args.clients, "seconds": args.seconds, "results": results, "ratio": round(ratio, 2)},
    )


if __name__ == "__main__":
    main()
