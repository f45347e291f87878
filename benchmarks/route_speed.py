"""How fast the fleet router decides, and how much latency `distill fleet serve` adds to a request.

    OMP_NUM_THREADS=1 python benchmarks/route_speed.py                 # both embedders
    OMP_NUM_THREADS=1 python benchmarks/route_speed.py --embedders minilm-static --n 500

On the fleet with known strengths of distill/testing/fleet_world.py (90 calibration tasks, 4 members), for each embedder:
- load: reading the router folder (two small files), and loading the embedding model once;
- one decision (embed one short query + score the members), one request at a time: median and p95 latency, and
  decisions per second; the same for a long query (~120 words), and batched (256 queries embedded at once);
- the parts: scoring alone (numpy over the clusters) and the gold-free check of one answer (parse + schema);
- added latency through `distill fleet serve` (a subprocess, routing + cascade + proxying) in front of the stdlib
  stub server of distill/testing/openai_stub.py (with TCP_NODELAY, like production servers), against asking the stub
  directly: median of the paired difference.

Prints a table last; writes route_speed.json under $OUT when set. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

LONG = ("I am planning a long trip next month and I need to know what the weather will look like so that I can pack "
        "the right clothes, because last time I went I was caught in a storm without a coat and it ruined the first "
        "three days of the holiday; the city is Reykjavik and I would like the forecast for the next five days, "
        "including temperature, wind and the chance of rain, and if possible a note on whether the roads to the "
        "airport are likely to be closed by snow or ice during that period, since my flight leaves early.")


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def _timeit(fn, n: int, warmup: int = 5) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def _wait(url: str, proc, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except OSError:
            if proc.poll() is not None:
                raise SystemExit(f"fleet serve exited with {proc.returncode}") from None
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def _nodelay(stub):
    """Set TCP_NODELAY on the stub's connections, as uvicorn-based servers (vLLM, SGLang, transformers serve) do.
    The stdlib server writes a response's headers and body separately; without it, Nagle's algorithm holds the body
    until the client's delayed ACK (~40 ms on Linux), which an async client (httpx.AsyncClient, what fleet serve
    uses) waits for, and the benchmark would measure that instead of the router."""
    import socket

    accept = stub._server.get_request

    def get_request():
        conn, addr = accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn, addr

    stub._server.get_request = get_request
    return stub


def bench_embedder(world, name: str, n: int, n_http: int) -> dict:
    import httpx
    import numpy as np

    from distill.cli import main
    from distill.fleet import load_fleet, save_fleet
    from distill.fleet.cascade import check_answer, fleet_members
    from distill.fleet.router import get_embedder, load_router, question_text
    from distill.testing.fleet_world import answer
    from distill.testing.openai_stub import StubServer, free_port
    from eval.tasks import task_from_dict

    t0 = time.perf_counter()
    get_embedder(name)  # first in this process (the static embedder first: minilm's time includes importing torch)
    load_embedder_s = time.perf_counter() - t0
    router_dir = world.root / f"router-{name}"
    assert main(["fleet", "fit", "--fleet", str(world.fleet), "--tasks", str(world.calib), "--out", str(router_dir),
                 "--embedder", name, "--no-register"]) == 0
    members = fleet_members(world.fleet)
    t0 = time.perf_counter()
    router = load_router(router_dir, members)
    load_router_s = time.perf_counter() - t0

    tasks = list(world.tasks.values())
    queries = [(t["messages"], t["tools"]) for t in tasks]
    words = statistics.mean(len(question_text(m).split()) for m, _ in queries)
    i = iter(range(10**9))

    def one():
        m, tl = queries[next(i) % len(queries)]
        router.route(m, tl)

    single = _timeit(one, n)
    long_msgs = [{"role": "user", "content": LONG}]
    long_ = _timeit(lambda: router.route(long_msgs, queries[0][1]), max(10, n // 10))
    batch = (queries * 3)[:256]
    t0 = time.perf_counter()
    for x in router.features(batch):
        router.decide(x)
    batch_s = time.perf_counter() - t0
    e0 = router.features(queries[:1])[0]
    decide = _timeit(lambda: router.decide(e0), n * 4)
    task = tasks[0]
    req = task_from_dict({"id": "r", "messages": task["messages"], "tools": task["tools"], "expected": []})
    raw = answer(task, "teacher", 0, True)
    check = _timeit(lambda: check_answer(req, raw), n * 4)

    # added latency through the real server: client -> fleet serve -> stub, against client -> stub
    added = None
    if n_http:
        stub = _nodelay(StubServer(model="stub-model").start())
        fleet = load_fleet(world.fleet)
        for m in fleet["members"]:
            m["endpoint"] = {"base_url": stub.base_url, "model": "stub-model"}
        served = world.root / f"fleet-{name}.yaml"
        for m in fleet["members"]:
            for k in ("report", "verdicts"):
                m[k] = str(world.root / m[k])
        save_fleet(served, fleet)
        port = free_port()
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        log = open(world.root / f"serve-{name}.log", "w")
        proc = subprocess.Popen([sys.executable, "-m", "distill", "fleet", "serve", "--fleet", str(served), "--port",
                                 str(port), "--router", str(router_dir)], stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait(f"http://127.0.0.1:{port}/health", proc)
            search = {"type": "function", "function": {"name": "search", "parameters": {
                "type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}
            with httpx.Client(timeout=60) as client:
                diffs, direct_t, fleet_t = [], [], []
                for k in range(n_http + 5):
                    m, _ = queries[k % len(queries)]
                    body = {"model": "stub-model", "messages": m, "tools": [search]}
                    t0 = time.perf_counter()
                    client.post(f"{stub.base_url}/chat/completions", json=body).raise_for_status()
                    t1 = time.perf_counter()
                    r = client.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body)
                    t2 = time.perf_counter()
                    r.raise_for_status()
                    assert r.headers["x-distill-verified"] == "true"
                    if k >= 5:  # warm-up: connections, first embedder call
                        direct_t.append(t1 - t0)
                        fleet_t.append(t2 - t1)
                        diffs.append((t2 - t1) - (t1 - t0))
            added = {"direct_ms_p50": 1e3 * statistics.median(direct_t), "fleet_ms_p50": 1e3 * statistics.median(fleet_t),
                     "added_ms_p50": 1e3 * statistics.median(diffs), "added_ms_p95": 1e3 * _pct(diffs, 0.95),
                     "n": len(diffs)}
        finally:
            proc.terminate()
            proc.wait(timeout=10)
            log.close()
            stub.stop()

    return {
        "embedder": name, "router_load_ms": 1e3 * load_router_s, "embedder_load_s": load_embedder_s,
        "query_words": round(words, 1),
        "decision_ms_p50": 1e3 * statistics.median(single), "decision_ms_p95": 1e3 * _pct(single, 0.95),
        "decisions_per_s": 1 / statistics.mean(single),
        "long_query_ms_p50": 1e3 * statistics.median(long_), "long_query_words": len(LONG.split()),
        "batched_decisions_per_s": len(batch) / batch_s,
        "score_only_us_p50": 1e6 * statistics.median(decide), "check_answer_us_p50": 1e6 * statistics.median(check),
        "serve": added, "n": n, "clusters": len(router.meta["clusters"]), "members": len(router.routed),
        "dims": int(np.asarray(e0).shape[0]), "load_average": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--embedders", default="minilm-static,minilm", help="comma-separated (default: %(default)s)")
    ap.add_argument("--n", type=int, default=200, help="single decisions timed per embedder (default: %(default)s)")
    ap.add_argument("--http", type=int, default=100, help="requests through fleet serve per embedder; 0 skips it "
                    "(default: %(default)s)")
    args = ap.parse_args()
    from distill.testing.fleet_world import build_world

    with tempfile.TemporaryDirectory() as tmp:
        world = build_world(Path(tmp) / "w")
        results = [bench_embedder(world, e, args.n, args.http) for e in args.embedders.split(",")]

    print(f"\nrouter: {results[0]['clusters']} clusters, {results[0]['members']} members; short questions of "
          f"~{results[0]['query_words']} words (tool-set embeddings cached, as in serving), long query {results[0]['long_query_words']} words; "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, {os.cpu_count()} CPUs")
    head = ("embedder", "router load", "model load", "decision p50", "p95", "decisions/s", "long p50", "batched/s",
            "score only", "check", "serve added p50", "p95")
    rows = []
    for r in results:
        s = r["serve"] or {}
        rows.append((r["embedder"], f"{r['router_load_ms']:.1f} ms", f"{r['embedder_load_s']:.1f} s",
                     f"{r['decision_ms_p50']:.2f} ms", f"{r['decision_ms_p95']:.2f} ms", f"{r['decisions_per_s']:.0f}",
                     f"{r['long_query_ms_p50']:.2f} ms", f"{r['batched_decisions_per_s']:.0f}",
                     f"{r['score_only_us_p50']:.0f} us", f"{r['check_answer_us_p50']:.0f} us",
                     f"{s['added_ms_p50']:.2f} ms" if s else "-", f"{s['added_ms_p95']:.2f} ms" if s else "-"))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    for row in (head, *rows):
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "route_speed.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
