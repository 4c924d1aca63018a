"""Serving under load: `spectune serve` on loopback, with dynamic batching on and off, in one run.

For each mode a fresh server process is started (on: --max-batch 32; off: --max-batch 1, one
request at a time) and driven by 1, 4, 16 and 32 concurrent streaming chat clients, each sending
a fixed number of requests back to back. Columns: requests/s, generated tokens/s, latency p50/p99,
time to first token p50/p99, and every non-200 answer by status (429s apart from errors). The
ratio column is throughput with batching over the sequential server's at the same concurrency.
Usage: python bench/serve.py [--model smollm2-135m] [--requests 2] [--max-tokens 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

QUESTIONS = ["How do I reset my password?", "What is the capital of Italy?", "Write a haiku about rain.",
             "Give me three tips for better sleep.", "Explain what a CPU does.", "What is 12 times 7?",
             "Name a famous painting.", "How do plants make food?"]


def start(model: str, max_batch: int) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-m", "spectune.cli", "serve", "--model", model, "--name", "m",
                             "--port", "0", "--max-batch", str(max_batch), "--max-queue", "256"],
                            stderr=subprocess.PIPE, text=True)
    url = None
    for line in proc.stderr:
        found = re.search(r"http://[\d.]+:(\d+)", line)
        if found:
            url = f"http://127.0.0.1:{found.group(1)}"
        if "ready:" in line:
            break
        if "error" in line:
            raise SystemExit(line)
    return proc, url


async def client(http: httpx.AsyncClient, url: str, n: int, offset: int, max_tokens: int, out: list) -> None:
    for i in range(n):
        body = {"model": "m", "messages": [{"role": "user", "content": QUESTIONS[(offset + i) % len(QUESTIONS)]}],
                "max_tokens": max_tokens, "temperature": 0, "stream": True,
                "stream_options": {"include_usage": True}}
        t0, first, tokens, status = time.perf_counter(), None, 0, None
        try:
            async with http.stream("POST", url + "/v1/chat/completions", json=body) as r:
                status = r.status_code
                async for line in r.aiter_lines():
                    if not line.startswith("data: {"):
                        continue
                    event = json.loads(line[6:])
                    if first is None and event.get("choices") and event["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - t0
                    if event.get("usage"):
                        tokens = event["usage"]["completion_tokens"]
        except httpx.HTTPError as e:
            status = f"dropped ({type(e).__name__})"
        out.append({"status": status, "seconds": time.perf_counter() - t0, "ttft": first, "tokens": tokens})


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))] if values else float("nan")


async def level(url: str, clients: int, n: int, max_tokens: int) -> dict:
    out: list = []
    async with httpx.AsyncClient(timeout=600, limits=httpx.Limits(max_connections=clients + 4)) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(http, url, n, c, max_tokens, out) for c in range(clients)))
        wall = time.perf_counter() - t0
    ok = [r for r in out if r["status"] == 200]
    return {"clients": clients, "requests": len(out), "wall_s": round(wall, 2),
            "requests_per_s": round(len(ok) / wall, 3), "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 1),
            "latency_p50_s": round(pct([r["seconds"] for r in ok], 0.5), 3),
            "latency_p99_s": round(pct([r["seconds"] for r in ok], 0.99), 3),
            "ttft_p50_s": round(pct([r["ttft"] for r in ok if r["ttft"] is not None], 0.5), 3),
            "ttft_p99_s": round(pct([r["ttft"] for r in ok if r["ttft"] is not None], 0.99), 3),
            "not_200": dict(Counter(str(r["status"]) for r in out if r["status"] != 200))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--requests", type=int, default=2, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--levels", default="1,4,16,32")
    ap.add_argument("--json", default="bench/serve.json")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    results = {}
    for mode, max_batch in (("batching", 32), ("sequential", 1)):
        proc, url = start(a.model, max_batch)
        try:
            asyncio.run(level(url, 1, 1, 4))  # warm-up, not counted
            results[mode] = [asyncio.run(level(url, c, a.requests, a.max_tokens)) for c in levels]
        finally:
            proc.terminate()
            proc.wait(120)
    print(f"\nspectune serve, {a.model}, {a.requests} chat requests per client, max_tokens {a.max_tokens}, "
          f"greedy, streamed; {os.cpu_count()} CPU cores")
    print(f"{'mode':<11}{'clients':>8}{'req/s':>8}{'tok/s':>8}{'p50 s':>8}{'p99 s':>8}{'ttft50':>8}{'ttft99':>8}"
          f"{'x seq':>7}  not 200")
    for mode in results:
        for r, seq in zip(results[mode], results["sequential"], strict=True):
            ratio = r["tokens_per_s"] / seq["tokens_per_s"] if seq["tokens_per_s"] else float("nan")
            r["throughput_vs_sequential"] = round(ratio, 2)
            print(f"{mode:<11}{r['clients']:>8}{r['requests_per_s']:>8.2f}{r['tokens_per_s']:>8.1f}"
                  f"{r['latency_p50_s']:>8.2f}{r['latency_p99_s']:>8.2f}{r['ttft_p50_s']:>8.2f}{r['ttft_p99_s']:>8.2f}"
                  f"{ratio:>7.2f}  {r['not_200'] or '-'}")
    Path(a.json).write_text(json.dumps({"model": a.model, "requests_per_client": a.requests,
                                        "max_tokens": a.max_tokens, "cpu_cores": os.cpu_count(),
                                        "results": results}, indent=1))
    print(f"written to {a.json}")


if __name__ == "__main__":
    main()
