"""Load on the playground: concurrent clients racing optimizers through POST /api/race, on loopback.

    python benchmarks/playground_load.py                  # 8 clients × 12 requests, 3 optimizers × 200 steps
    python benchmarks/playground_load.py --clients 8 --requests 20 --workers 2 --json load.json

Starts `optimlab serve` on 127.0.0.1 (a free port), then runs two rounds of `clients` concurrent
clients, each sending `requests` races one after another and timing every answer:
  fresh   every request a different start point, so every answer is computed (no cache hit);
  shared  every client asks for the same race, as readers of one shared link do (computed once, then
          answered from the server's cache).
Prints the p50 and p95 latency of each round and its throughput. Target (issue 12): p50 < 200 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from web_support import served

OPTIMIZERS = ["sgd", "momentum", "adam"]


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else values[0]


async def client(http: httpx.AsyncClient, url: str, k: int, requests: int, steps: int, fresh: bool,
                 times: list[float], statuses: list[int]) -> None:
    for i in range(requests):
        body = {"landscape": "canyon", "optimizers": OPTIMIZERS, "steps": steps}
        if fresh:  # a start no other request uses: the answer must be computed
            body["start"] = [1.0 - 0.001 * (k * requests + i), 1.0]
        start = time.perf_counter()
        response = await http.post(f"{url}/api/race", json=body)
        times.append(time.perf_counter() - start)
        statuses.append(response.status_code)


async def round_(url: str, clients: int, requests: int, steps: int, fresh: bool) -> dict:
    times: list[float] = []
    statuses: list[int] = []
    async with httpx.AsyncClient(timeout=120) as http:
        began = time.perf_counter()
        await asyncio.gather(*(client(http, url, k, requests, steps, fresh, times, statuses)
                               for k in range(clients)))
        wall = time.perf_counter() - began
    ok = [t for t, s in zip(times, statuses) if s == 200]
    return {"round": "fresh" if fresh else "shared", "clients": clients, "requests": len(times),
            "ok": len(ok), "refused": {str(s): statuses.count(s) for s in set(statuses) if s != 200},
            "p50_ms": 1000 * percentile(ok, 50), "p95_ms": 1000 * percentile(ok, 95),
            "max_ms": 1000 * max(ok), "per_second": len(ok) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=12, help="races per client per round")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2, help="the server's worker processes")
    parser.add_argument("--json", metavar="PATH", help="also write the figures here")
    args = parser.parse_args()
    with served(workers=args.workers) as url:
        # one untimed race per worker first: the first answer of a fresh process is not the point
        asyncio.run(round_(url, args.workers, 1, args.steps, fresh=True))
        rounds = [asyncio.run(round_(url, args.clients, args.requests, args.steps, fresh=fresh))
                  for fresh in (True, False)]
    print(f"POST /api/race, canyon, {'+'.join(OPTIMIZERS)} × {args.steps} steps; {args.clients} concurrent "
          f"clients on loopback; server with {args.workers} worker processes on {os.cpu_count()} CPUs")
    print(f"{'round':<8} {'requests':>8} {'ok':>5} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'req/s':>7}"
          "  refused")
    for r in rounds:
        print(f"{r['round']:<8} {r['requests']:>8} {r['ok']:>5} {r['p50_ms']:>8.0f} {r['p95_ms']:>8.0f} "
              f"{r['max_ms']:>8.0f} {r['per_second']:>7.1f}  {r['refused'] or '-'}")
    if args.json:
        Path(args.json).write_text(json.dumps(rounds, indent=2))


if __name__ == "__main__":
    main()
