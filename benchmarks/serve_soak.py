"""Soak and abuse check of `distill fleet serve` on loopback: memory stays flat under requests that each bring a tool
schema nobody sent before, a burst of concurrent requests is answered in full, and oversized or malformed bodies are
refused without disturbing other clients.

    OMP_NUM_THREADS=1 python benchmarks/serve_soak.py                                # 2,000 schemas, 200 at once
    OMP_NUM_THREADS=1 python benchmarks/serve_soak.py --requests 500 --concurrent 50 --no-save   # a quick look

Setup: the stdlib stub member of distill/testing/openai_stub.py (it answers a schema-valid Hermes call to the
request's first tool) behind `distill fleet serve --no-router` started as its own process, with its default limits
(or --schema-cache N). Memory is the server process's resident set (VmRSS from /proc, so Linux only).

1. warm-up: 200 requests with one repeated schema (imports, connection pools, the first compile);
2. soak: --requests requests, each with one tool whose schema is new (a distinct property name), 8 in flight;
   RSS sampled every 100 requests. Flat means: RSS at the end minus RSS once the compiled-schema cache was full
   stays within --bound-mb (when the soak is shorter than the cache, against RSS after the warm-up), and the
   least-squares slope of RSS after that point stays under --slope-bound MB per 1,000 requests;
3. burst: --concurrent requests sent at once, each with a new schema: every one must come back 200 and verified;
4. abuse, each while a /health probe runs every 10 ms: a body over the size limit (50 MB) must get 413; a body nested
   100,000 deep must get 400; a request with more tools than the limit must get 400; a request with the most tools
   allowed, each a new schema, must be answered; the slowest /health answer during these shows whether the event
   loop was blocked.

Prints a table; writes benchmarks/results/serve_soak-<date>.json and .md unless --no-save.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RESULTS = ROOT / "benchmarks" / "results"


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def tool(i: int, width: int = 4) -> dict:
    """A tool whose schema no other i shares: a distinct property name and description."""
    props = {"query": {"type": "string", "description": "what to look for"}}
    for j in range(width):
        props[f"p{i}_{j}"] = {"type": "integer", "description": f"option {j} of tool {i}", "minimum": 0}
    return {"type": "function", "function": {"name": f"tool_{i}", "description": f"Tool number {i}.",
                                             "parameters": {"type": "object", "properties": props,
                                                            "required": ["query"]}}}


def body(i: int, tools: list[dict] | None = None) -> dict:
    return {"model": "fleet", "messages": [{"role": "user", "content": f"request {i}"}],
            "tools": tools if tools is not None else [tool(i)], "max_tokens": 16}


async def post(client, url: str, payload) -> tuple[int, dict]:
    data = payload if isinstance(payload, (bytes, bytearray)) else json.dumps(payload).encode()
    try:
        r = await client.post(url, content=data, headers={"content-type": "application/json"})
    except Exception as e:  # a connection the server closed after refusing a large body
        return -1, {"exception": f"{type(e).__name__}: {e}"}
    return r.status_code, dict(r.headers)


async def soak(url: str, pid: int, n: int, offset: int, in_flight: int, every: int) -> tuple[list, list]:
    import httpx

    samples, bad = [], []
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=in_flight)) as client:
        sem = asyncio.Semaphore(in_flight)

        async def one(i: int) -> None:
            async with sem:
                status, headers = await post(client, url, body(offset + i))
            if status != 200 or headers.get("x-distill-verified") != "true":
                bad.append((i, status, headers.get("x-distill-verified")))

        for start in range(0, n, every):
            await asyncio.gather(*(one(i) for i in range(start, min(n, start + every))))
            samples.append((min(n, start + every), round(rss_mb(pid), 1)))
    return samples, bad


async def burst(url: str, n: int, offset: int) -> dict:
    import httpx

    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=n)) as client:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(post(client, url, body(offset + i)) for i in range(n)))
        wall = time.perf_counter() - t0
    answered = sum(1 for s, h in results if s == 200)
    verified = sum(1 for s, h in results if s == 200 and h.get("x-distill-verified") == "true")
    return {"sent": n, "answered_200": answered, "verified": verified, "wall_s": round(wall, 2),
            "statuses": sorted({s for s, _ in results})}


async def abuse(base: str, max_tools: int, offset: int) -> dict:
    """Each abusive request while /health is probed every 10 ms; the slowest probe during it."""
    import httpx

    url = f"{base}/v1/chat/completions"
    big = b'{"model": "fleet", "messages": [{"role": "user", "content": "' + b"x" * (50 * 2**20) + b'"}]}'
    deep = b'{"model": "fleet", "messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    cases = {
        "50 MB body": big,
        "body nested 100,000 deep": deep,
        f"{max_tools + 1} tools (one over the limit)": body(0, [tool(offset + k) for k in range(max_tools + 1)]),
        f"{max_tools} new tool schemas (the limit)": body(1, [tool(offset + max_tools + 1 + k, width=8)
                                                              for k in range(max_tools)]),
    }
    out = {}
    async with httpx.AsyncClient(timeout=120) as client, httpx.AsyncClient(timeout=30) as probe_client:
        for name, payload in cases.items():
            worst = 0.0
            stop = asyncio.Event()

            async def probe(stop: asyncio.Event) -> None:
                nonlocal worst
                while not stop.is_set():
                    t0 = time.perf_counter()
                    r = await probe_client.get(f"{base}/health")
                    assert r.status_code == 200
                    worst = max(worst, time.perf_counter() - t0)
                    await asyncio.sleep(0.01)

            task = asyncio.create_task(probe(stop))
            await asyncio.sleep(0.05)
            t0 = time.perf_counter()
            status, headers = await post(client, url, payload)
            took = time.perf_counter() - t0
            await asyncio.sleep(0.05)
            stop.set()
            await task
            out[name] = {"status": status, "seconds": round(took, 3), "slowest_health_ms": round(1000 * worst, 1),
                         **({"detail": headers["exception"]} if "exception" in headers else {})}
    return out


def write_fleet(path: Path, base_url: str) -> None:
    import yaml

    path.write_text(yaml.safe_dump({"version": 1, "members": [
        {"name": "stub", "cost": 0.5, "endpoint": {"base_url": base_url, "model": "stub-model"}}]}))


def server_limits(exe_args: list[str]) -> dict:
    """The server's defaults for the limits this benchmark exercises, read from its parser."""
    from distill.cli import build_parser

    args = build_parser().parse_args(["fleet", "serve", "--fleet", "f", "--port", "1", *exe_args])
    return {"schema_cache": args.schema_cache, "max_tools": args.max_tools, "max_body_mb": args.max_body_mb}


def main(argv: list[str] | None = None) -> int:
    import urllib.request

    from distill.testing.openai_stub import StubServer, free_port

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000, help="soak requests, each with a new schema")
    ap.add_argument("--concurrent", type=int, default=200, help="requests in the burst, sent at once")
    ap.add_argument("--schema-cache", type=int, default=None, help="server's --schema-cache (default: its own)")
    ap.add_argument("--bound-mb", type=float, default=16.0, help="allowed RSS growth once the cache is full, MB")
    ap.add_argument("--slope-bound", type=float, default=2.0, help="allowed steady RSS growth once the cache is "
                    "full, MB per 1,000 requests (a leak of a few KB per schema shows here)")
    ap.add_argument("--no-save", action="store_true", help="print only; write no results files")
    args = ap.parse_args(argv)

    extra = ["--schema-cache", str(args.schema_cache)] if args.schema_cache is not None else []
    limits = server_limits(extra)
    tmp = Path(tempfile.mkdtemp(prefix="serve_soak."))
    stub = StubServer(model="stub-model").start()
    port = free_port()
    write_fleet(tmp / "fleet.yaml", stub.base_url)
    log = tmp / "serve.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "distill", "fleet", "serve", "--fleet", str(tmp / "fleet.yaml"),
                             "--port", str(port), "--no-router", *extra], stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    print(log.read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.2)
        url = f"{base}/v1/chat/completions"

        async def warm() -> None:
            import httpx

            async with httpx.AsyncClient(timeout=60) as client:
                for _ in range(200):
                    status, _ = await post(client, url, body(-1))
                    assert status == 200, status

        asyncio.run(warm())
        rss_warm = round(rss_mb(proc.pid), 1)
        t0 = time.perf_counter()
        samples, bad = asyncio.run(soak(url, proc.pid, args.requests, 0, 8, 100))
        soak_s = time.perf_counter() - t0
        full_at = limits["schema_cache"]
        ref = next(((k, r) for k, r in samples if k >= full_at), None) if full_at < args.requests else None
        ref_n, ref_rss = ref if ref else (0, rss_warm)
        growth_after_full = round(samples[-1][1] - ref_rss, 1)
        # least-squares slope of RSS over the requests after the cache was full: a leak shows as a steady slope
        tail = [(k, r) for k, r in samples if k >= ref_n]
        slope = None
        if len(tail) >= 3:
            mk, mr = sum(k for k, _ in tail) / len(tail), sum(r for _, r in tail) / len(tail)
            slope = round(1000 * sum((k - mk) * (r - mr) for k, r in tail) / sum((k - mk) ** 2 for k, _ in tail), 2)
        burst_result = asyncio.run(burst(url, args.concurrent, 10 * args.requests))
        abuse_result = asyncio.run(abuse(base, limits["max_tools"], 20 * args.requests))
        rss_end = round(rss_mb(proc.pid), 1)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        stub.stop()

    result = {
        "date": date.today().isoformat(),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "server_limits": limits,
        "soak": {"requests": args.requests, "in_flight": 8, "seconds": round(soak_s, 1),
                 "requests_per_s": round(args.requests / soak_s, 1), "not_answered_or_unverified": len(bad),
                 "rss_after_warmup_mb": rss_warm, "rss_samples_mb": samples,
                 "reference": {"after_request": ref_n, "rss_mb": ref_rss},
                 "growth_after_cache_full_mb": growth_after_full, "bound_mb": args.bound_mb,
                 "mb_per_1000_requests_after_cache_full": slope, "slope_bound_mb_per_1000": args.slope_bound,
                 "flat": growth_after_full <= args.bound_mb and (slope is None or slope <= args.slope_bound)},
        "burst": burst_result,
        "abuse": abuse_result,
        "rss_end_mb": rss_end,
    }
    ok = (result["soak"]["flat"] and not bad and burst_result["verified"] == args.concurrent
          and list(abuse_result.values())[0]["status"] == 413 and list(abuse_result.values())[1]["status"] == 400
          and list(abuse_result.values())[2]["status"] == 400 and list(abuse_result.values())[3]["status"] == 200)
    result["all_checks_pass"] = ok
    lines = [
        f"# `distill fleet serve` soak, {result['date']}",
        "",
        f"Machine: {result['machine']['platform']}, {result['machine']['cpus']} CPUs, Python "
        f"{result['machine']['python']}. Server limits: {limits}. Command: `OMP_NUM_THREADS=1 python "
        f"benchmarks/serve_soak.py{' ' + ' '.join(argv or sys.argv[1:]) if (argv or sys.argv[1:]) else ''}`.",
        "",
        "| check | result |",
        "| --- | --- |",
        f"| soak: {args.requests} requests, each a new schema, 8 in flight | {len(bad)} not answered or unverified; "
        f"{result['soak']['requests_per_s']} requests/s |",
        f"| RSS after warm-up / after request {ref_n} / at the end of the soak | {rss_warm} / {ref_rss} / "
        f"{samples[-1][1]} MB |",
        f"| RSS growth once the cache was full (bounds: {args.bound_mb:g} MB, {args.slope_bound:g} MB per 1,000 "
        f"requests) | {growth_after_full} MB, {slope} MB per 1,000 requests "
        f"({'flat' if result['soak']['flat'] else 'NOT flat'}) |",
        f"| burst: {args.concurrent} requests at once | {burst_result['answered_200']} answered 200, "
        f"{burst_result['verified']} verified, in {burst_result['wall_s']} s |",
        *[f"| {name} | HTTP {r['status']} in {r['seconds']} s; slowest /health meanwhile {r['slowest_health_ms']} ms |"
          for name, r in abuse_result.items()],
        "",
        "RSS samples (requests done, MB): " + ", ".join(f"{k}: {r}" for k, r in samples),
        "",
        f"All checks pass: {ok}.",
    ]
    print("\n".join(lines))
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        stem = RESULTS / f"serve_soak-{result['date']}"
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
