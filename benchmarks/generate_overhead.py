"""How much the `openai` teacher backend costs on the client side, against the server's own throughput.

    OMP_NUM_THREADS=1 python benchmarks/generate_overhead.py [--n 3000] [--concurrency 64] [--serve]

A stub server in its own process answers every chat completion at once with a canned tool call, so the only
cost left is the client's. Rows:
1. ceiling: a bare asyncio HTTP/1.1 keep-alive client against the stub, i.e. the stub's own throughput;
2. OpenAIBackend.generate(): the openai SDK, retries armed, concurrency window, result objects;
3. data_gen.generate() end to end: plus loading the tasks, parsing each answer and appending it to the file.
For 2 and 3 it reports requests/s, the ratio to the ceiling, and the client's CPU time per request (this
process only; the stub runs in another). With --serve it also measures `transformers serve` over the tiny
test model on this machine and prints how small the client's CPU per request is next to a real server's time
per request. Prints a table last; writes JSON under $OUT when set.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# A BFCL-sized tool (two functions, enums, nested object): request encoding scales with the schema.
TOOLS = [
    {"type": "function", "function": {
        "name": "get_weather", "description": "Current weather and a short forecast for a city.",
        "parameters": {"type": "object", "properties": {
            "city": {"type": "string", "description": "City name, e.g. Paris"},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "description": "forecast days, 1-7"},
            "include": {"type": "object", "properties": {"wind": {"type": "boolean"}, "humidity": {"type": "boolean"}}},
        }, "required": ["city"]}}},
    {"type": "function", "function": {
        "name": "book_table", "description": "Book a restaurant table.",
        "parameters": {"type": "object", "properties": {
            "restaurant": {"type": "string"}, "people": {"type": "integer"}, "time": {"type": "string"},
        }, "required": ["restaurant", "people", "time"]}}},
]

_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
_BODY = json.dumps({
    "id": "chatcmpl-stub", "object": "chat.completion", "created": 0, "model": "stub-model",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": _CALL}}],
    "usage": {"prompt_tokens": 300, "completion_tokens": 30, "total_tokens": 330},
}).encode()
_MODELS = json.dumps({"object": "list", "data": [{"id": "stub-model", "object": "model"}]}).encode()


# --- the stub server (its own process) ------------------------------------------------------------------------
# Hand-written HTTP/1.1 on asyncio streams rather than uvicorn: with only h11 installed, uvicorn's pure-Python
# parser would be slower than the client under test, and the point is a server that costs (almost) nothing.

async def _serve_conn(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            if length:
                await reader.readexactly(length)
            body = _MODELS if head.startswith(b"GET") else _BODY
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                         + str(len(body)).encode() + b"\r\n\r\n" + body)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


async def _stub_main(port: int) -> None:
    server = await asyncio.start_server(_serve_conn, "127.0.0.1", port, backlog=1024)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()


def start_stub() -> tuple[subprocess.Popen, int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, __file__, "--stub-server", str(port)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    return proc, port


# --- 1. the ceiling: a bare keep-alive client -----------------------------------------------------------------

async def bare_client(port: int, n: int, concurrency: int) -> float:
    payload = json.dumps({"model": "stub-model", "messages": [{"role": "user", "content": "hi"}], "tools": TOOLS}).encode()
    request = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
               b"content-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    left = [n]

    async def worker():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while left[0] > 0:
            left[0] -= 1
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
        writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start


# --- 2 and 3: the backend, and generate() end to end ------------------------------------------------------------

def requests(n: int):
    from data_gen.backends.base import Request

    return [Request(f"t{i}", 0, [{"role": "user", "content": f"Weather in Paris, day {i}?"}], TOOLS, seed=i) for i in range(n)]


async def backend_only(backend, n: int) -> int:
    count = 0
    async for result in backend.generate(requests(n)):
        assert result.error is None, result.error_detail
        count += 1
    return count


def write_tasks(path: Path, n: int) -> None:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"id": f"t{i}", "category": "bench",
                                "messages": [{"role": "user", "content": f"Weather in Paris, day {i}?"}],
                                "tools": TOOLS,
                                "expected": [{"name": "get_weather", "arguments": {"city": ["Paris"]}}]}) + "\n")


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def measure_transformers_serve(n: int, concurrency: int, max_new_tokens: int) -> dict:
    """req/s of `transformers serve` over the tiny test model, driven by the backend, plus client CPU."""
    import shutil
    import urllib.request

    from data_gen.backends.base import Sampling
    from data_gen.backends.openai_backend import OpenAIBackend
    from distill.testing.tiny_model import build_tiny_model

    tmp = Path(tempfile.mkdtemp(prefix="genbench_"))
    model = str(build_tiny_model(tmp / "tiny"))
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("transformers", path=str(Path(sys.executable).parent)) or "transformers"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([exe, "serve", model, "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        for _ in range(400):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.3)
        backend = OpenAIBackend(model, base_url=f"http://127.0.0.1:{port}/v1", concurrency=concurrency,
                                sampling=Sampling(temperature=0, max_new_tokens=max_new_tokens))
        asyncio.run(backend_only(backend, 4))  # warm-up
        _, wall, cpu = timed(lambda: asyncio.run(backend_only(backend, n)))
        return {"n": n, "concurrency": concurrency, "max_new_tokens": max_new_tokens, "req_per_s": n / wall,
                "client_cpu_us_per_req": 1e6 * cpu / n}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=3000, help="requests per row (default: %(default)s)")
    ap.add_argument("--concurrency", type=int, default=64, help="requests in flight (default: %(default)s)")
    ap.add_argument("--serve", action="store_true", help="also measure transformers serve over the tiny model")
    ap.add_argument("--serve-n", type=int, default=48, help="requests against transformers serve")
    ap.add_argument("--serve-max-new-tokens", type=int, default=16)
    ap.add_argument("--stub-server", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.stub_server:
        asyncio.run(_stub_main(args.stub_server))
        return

    from data_gen.backends.base import Sampling
    from data_gen.backends.openai_backend import OpenAIBackend
    from data_gen.generate import generate

    proc, port = start_stub()
    url = f"http://127.0.0.1:{port}/v1"
    n, c = args.n, args.concurrency
    rows = {}
    try:
        asyncio.run(bare_client(port, 200, c))  # warm-up
        wall = asyncio.run(bare_client(port, n, c))
        rows["ceiling (bare asyncio client)"] = {"req_per_s": n / wall, "client_cpu_us_per_req": None}

        backend = OpenAIBackend("stub-model", base_url=url, sampling=Sampling(), concurrency=c)
        asyncio.run(backend_only(backend, 200))  # warm-up: imports, pydantic model building
        count, wall, cpu = timed(lambda: asyncio.run(backend_only(backend, n)))
        assert count == n
        rows["OpenAIBackend.generate()"] = {"req_per_s": n / wall, "client_cpu_us_per_req": 1e6 * cpu / n}

        with tempfile.TemporaryDirectory() as tmp:
            write_tasks(Path(tmp) / "tasks.jsonl", n)
            from eval.tasks import load_tasks

            _, load_wall, load_cpu = timed(lambda: load_tasks(Path(tmp) / "tasks.jsonl"))
            summary, wall, cpu = timed(lambda: generate(Path(tmp) / "tasks.jsonl", backend, Path(tmp) / "out.jsonl",
                                                        1, progress=False))
            assert summary.written == n and not summary.failed
        rows["data_gen.generate() end to end"] = {"req_per_s": n / wall, "client_cpu_us_per_req": 1e6 * cpu / n}
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    serve = measure_transformers_serve(args.serve_n, 8, args.serve_max_new_tokens) if args.serve else None

    ceiling = rows["ceiling (bare asyncio client)"]["req_per_s"]
    e2e = rows["data_gen.generate() end to end"]
    result = {"n": n, "concurrency": c, "rows": rows, "transformers_serve": serve,
              "load_tasks_us_per_task": 1e6 * load_cpu / n}
    print(f"\n{n} chat completions, {c} in flight, against a stub that answers at once (separate process)\n")
    print(f"{'client':34} {'req/s':>9} {'of ceiling':>11} {'client CPU/req':>15}")
    for name, r in rows.items():
        cpu = f"{r['client_cpu_us_per_req']:.0f} us" if r["client_cpu_us_per_req"] else "-"
        print(f"{name:34} {r['req_per_s']:9.0f} {r['req_per_s'] / ceiling:10.0%} {cpu:>15}")
    print(f"(the end-to-end row includes load_tasks, which validates and compiles every task once: "
          f"{result['load_tasks_us_per_task']:.0f} us CPU per task)")
    if serve:
        per_req_us = 1e6 / serve["req_per_s"]
        result["client_cpu_share_of_server_time"] = e2e["client_cpu_us_per_req"] / per_req_us
        result["headroom_x"] = e2e["req_per_s"] / serve["req_per_s"]
        print(f"\ntransformers serve, tiny model, {serve['max_new_tokens']} new tokens, {serve['concurrency']} in flight: "
              f"{serve['req_per_s']:.1f} req/s ({per_req_us / 1000:.0f} ms per request)")
        print(f"client CPU per request / server time per request: {result['client_cpu_share_of_server_time']:.2%}")
        print(f"generate() end to end could keep up with a server {result['headroom_x']:.0f}x faster than this one")
    if os.environ.get("OUT"):
        Path(os.environ["OUT"], "generate_overhead.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
