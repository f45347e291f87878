"""A key planted where a careless program would print it never reaches any output: real `distill` processes run
against servers that echo the request's headers (Authorization included) in their error bodies, and a training run
gets `--hub_token`; then stdout, stderr and every file the command wrote are searched for the key's bytes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import httpx
import yaml

from distill.testing.openai_stub import Fault, StubServer, free_port, write_tasks

ROOT = Path(__file__).resolve().parents[1]
# Shaped like no known token and kept in variables whose names say nothing: only registering the key finds it.
KEY = "zz-planted-9c41e7d0b2a6f"
HUB_KEY = "hf_" + "Q7x" * 12  # what `--hub_token` gets


def env(**extra) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **extra}


def leaks(secret: str, *texts: str, folder: Path | None = None) -> list[str]:
    """Where `secret` appears: 'stdout'/'stderr'/... for texts, and every file under folder holding its bytes."""
    found = [f"text {i}" for i, t in enumerate(texts) if secret in t]
    if folder is not None:
        found += [str(p) for p in folder.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]
    return found


def test_generate_prints_no_key_from_an_echoing_server(tmp_path):
    write_tasks(tmp_path / "tasks.jsonl", 3)
    always_500 = lambda body: Fault(status=500, echo_headers=True)  # noqa: E731
    with StubServer(fail_when=always_500) as server:
        p = subprocess.run(
            [sys.executable, "-m", "distill", "generate", "--tasks", "tasks.jsonl", "--backend", "openai",
             "--base-url", server.base_url, "--model", "stub-model", "--api-key-env", "LLM_CREDS",
             "--max-retries", "0", "--no-progress", "--out", "traces.jsonl"],
            cwd=tmp_path, env=env(LLM_CREDS=KEY), capture_output=True, text=True, timeout=120)
        sent = {r["headers"].get("authorization") for r in server.chat_requests}
    assert sent == {f"Bearer {KEY}"}  # the server got the key, and echoed it in every 500 body
    assert p.returncode == 1, p.stderr  # requests failed: counted, not written
    assert "http_500" in p.stderr and '"authorization": "bearer <redacted>"' in p.stderr.lower()
    assert leaks(KEY, p.stdout, p.stderr, folder=tmp_path) == []


def test_fleet_serve_logs_and_returns_no_member_key(tmp_path):
    port = free_port()
    with StubServer(model="stub-model", fail_when=lambda body: Fault(status=500, echo_headers=True)) as member:
        (tmp_path / "fleet.yaml").write_text(yaml.safe_dump({"version": 1, "members": [
            {"name": "m", "cost": 1.0, "endpoint": {"base_url": member.base_url, "model": "stub-model",
                                                     "api_key_env": "MEMBER_CREDS"}}]}))
        log = tmp_path / "serve.log"
        with open(log, "w") as f:
            proc = subprocess.Popen([sys.executable, "-m", "distill", "fleet", "serve", "--fleet", "fleet.yaml",
                                     "--port", str(port), "--no-router"], cwd=tmp_path, stdout=f,
                                    stderr=subprocess.STDOUT, env=env(MEMBER_CREDS=KEY))
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                    break
                except OSError:
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                    time.sleep(0.2)
            r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", timeout=60, json={
                "model": "fleet", "messages": [{"role": "user", "content": "hi"}]})
            sent = member.chat_requests[0]["headers"]["authorization"]
        finally:
            proc.terminate()
            proc.wait(timeout=20)
    assert sent == f"Bearer {KEY}"
    assert r.status_code == 503 and "<redacted>" in r.text
    assert "member 'm' failed (HTTP 500" in log.read_text()
    assert leaks(KEY, r.text, json.dumps(dict(r.headers)), folder=tmp_path) == []


def test_hub_token_reaches_no_file_of_a_training_run(tmp_path, tiny_model_dir, tiny_pairs_dir):
    out = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, "-m", "distill", "train", str(ROOT / "recipes" / "debug" / "tiny_cpu.yaml"),
         "--model_name_or_path", str(tiny_model_dir), "--dataset_path", str(tiny_pairs_dir), "--output_dir", str(out),
         "--max_steps", "2", "--save_steps", "2", "--hub_token", HUB_KEY],
        cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["overrides"][-2:] == ["--hub_token", "<redacted>"] and "<redacted>" in run["command"]
    bins = list(out.rglob("training_args.bin"))
    assert bins, "no checkpoint was saved: the check below would prove nothing"
    assert leaks(HUB_KEY, p.stdout, p.stderr, folder=tmp_path) == []
