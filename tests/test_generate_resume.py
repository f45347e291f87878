"""`data_gen.generate`: the traces file, resume, torn tails, failures and bad input, with an in-process backend
(the HTTP and model backends have their own tests)."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from data_gen.backends.base import Request, Result, Sampling, derive_seed
from data_gen.generate import _locked_append, generate, repair_tail, scan_traces
from distill.testing.openai_stub import write_tasks
from eval.io import DistillError


class EchoBackend:
    """Answers every request with a Hermes call to its first tool; fails the requests `fail(req)` picks."""

    name = "echo"

    def __init__(self, model="echo-model", sampling=None, fail=None):
        self.model = model
        self.sampling = sampling or Sampling(seed=3)
        self.fail = fail
        self.seen: list[Request] = []

    async def generate(self, requests):
        for req in requests:
            self.seen.append(req)
            if self.fail and self.fail(req):
                yield Result(req, error="http_503", error_detail="unavailable")
                continue
            name = req.tools[0]["function"]["name"]
            call = {"name": name, "arguments": {"query": req.messages[-1]["content"]}}
            yield Result(req, raw=f"<tool_call>\n{json.dumps(call)}\n</tool_call>", finish_reason="stop",
                         latency_s=0.01, prompt_tokens=10, completion_tokens=5)


def read_lines(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def keys(records):
    return [(r["task_id"], r["model"], r["sample"]) for r in records]


@pytest.fixture
def tasks(tmp_path):
    path = tmp_path / "tasks.jsonl"
    write_tasks(path, 5)
    return path


def test_fresh_run_writes_each_task_and_sample_once_with_parsed_calls(tasks, tmp_path):
    out = tmp_path / "traces.jsonl"
    backend = EchoBackend()
    summary = generate(tasks, backend, out, samples=3, progress=False)
    recs = read_lines(out)
    assert sorted(keys(recs)) == sorted((f"t{i}", "echo-model", s) for i in range(5) for s in range(3))
    assert summary.written == 15 and summary.already == 0 and summary.missing == 0
    assert summary.outputs == Counter(calls=15)
    assert summary.prompt_tokens == 150 and summary.completion_tokens == 75
    for r in recs:
        assert r["tool_calls"] == [{"name": "search", "arguments": {"query": r["raw"].split('"query": "')[1].split('"')[0]}}]
        assert r["sampling"] == {"temperature": 0.7, "top_p": 1.0, "max_new_tokens": 512, "seed": 3}
        assert r["backend"] == "echo"
    # every (task, sample) got its own seed, derived from the base seed
    seeds = [req.seed for req in backend.seen]
    assert len(set(seeds)) == 15
    assert seeds == [derive_seed(3, req.task_id, req.sample) for req in backend.seen]


def test_rerun_skips_everything_already_written_and_other_models_are_separate(tasks, tmp_path, capsys):
    out = tmp_path / "traces.jsonl"
    generate(tasks, EchoBackend(), out, samples=2, progress=False)
    before = out.read_bytes()
    again = EchoBackend()
    summary = generate(tasks, again, out, samples=2, progress=False)
    assert again.seen == [] and summary.written == 0 and summary.already == 10
    assert "warning" not in capsys.readouterr().err
    assert out.read_bytes() == before
    # more samples: only the new sample indices run
    more = EchoBackend()
    generate(tasks, more, out, samples=3, progress=False)
    assert sorted((r.task_id, r.sample) for r in more.seen) == [(f"t{i}", 2) for i in range(5)]
    # other sampling settings for the same model: the keys still count as done, with a warning
    hotter = EchoBackend(sampling=Sampling(temperature=1.2, seed=3))
    generate(tasks, hotter, out, samples=3, progress=False)
    assert hotter.seen == []
    assert "made with other sampling settings" in capsys.readouterr().err
    # another model in the same file has its own keys
    other = EchoBackend(model="other-model")
    generate(tasks, other, out, samples=1, progress=False)
    recs = read_lines(out)
    assert len(recs) == 20 and len(set(keys(recs))) == 20


def test_torn_last_line_is_dropped_and_rewritten_once(tasks, tmp_path):
    out = tmp_path / "traces.jsonl"
    generate(tasks, EchoBackend(), out, samples=2, limit=3, progress=False)  # 6 of the 10 traces
    whole = out.read_bytes()
    lines = whole.splitlines(keepends=True)
    # a killed writer: the last trace only half written
    out.write_bytes(b"".join(lines[:-1]) + lines[-1][: len(lines[-1]) // 2])
    lost = tuple(json.loads(lines[-1])[k] for k in ("task_id", "model", "sample"))
    backend = EchoBackend()
    summary = generate(tasks, backend, out, samples=2, progress=False)
    assert summary.dropped_tail_bytes == len(lines[-1]) // 2
    assert "dropped a half-written last line" in summary.format()
    recs = read_lines(out)  # every line parses
    assert len(recs) == 10 and len(set(keys(recs))) == 10
    assert (lost[0], lost[2]) in [(r.task_id, r.sample) for r in backend.seen]


def test_complete_last_line_without_newline_is_kept_not_duplicated(tasks, tmp_path):
    out = tmp_path / "traces.jsonl"
    generate(tasks, EchoBackend(), out, samples=1, limit=2, progress=False)
    out.write_bytes(out.read_bytes().rstrip(b"\n"))
    backend = EchoBackend()
    summary = generate(tasks, backend, out, samples=1, progress=False)
    assert summary.dropped_tail_bytes == 0 and summary.already == 2
    assert sorted(r.task_id for r in backend.seen) == ["t2", "t3", "t4"]
    assert len(read_lines(out)) == 5


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 6), cut=st.integers(0, 10_000))
def test_repair_tail_keeps_exactly_the_complete_lines(tmp_path_factory, n, cut):
    path = tmp_path_factory.mktemp("tail") / "t.jsonl"
    lines = [json.dumps({"task_id": f"t{i}", "model": "m", "sample": 0, "raw": "é" * i}) + "\n" for i in range(n)]
    data = "".join(lines).encode()
    cut = cut % (len(data) + 1)
    path.write_bytes(data[:cut])
    repair_tail(path)
    repaired = path.read_bytes()
    complete = [ln.encode() for ln in lines]
    # the result is the longest run of whole lines that fits in the cut (a line missing only "\n" counts whole)
    expected, size = b"", 0
    for ln in complete:
        if size + len(ln) - 1 <= cut:
            expected += ln
            size += len(ln)
    assert repaired == expected


def test_failed_requests_are_counted_not_written_and_retried_by_the_next_run(tasks, tmp_path):
    out = tmp_path / "traces.jsonl"
    summary = generate(tasks, EchoBackend(fail=lambda r: r.task_id == "t1"), out, samples=2, progress=False)
    assert summary.failed == Counter(http_503=2) and summary.written == 8 and summary.missing == 2
    assert "failed: 2 (http_503 2)" in summary.format() and "unavailable" in summary.format()
    retry = EchoBackend()
    summary = generate(tasks, retry, out, samples=2, progress=False)
    assert sorted((r.task_id, r.sample) for r in retry.seen) == [("t1", 0), ("t1", 1)]
    assert summary.missing == 0 and len(set(keys(read_lines(out)))) == 10 == len(read_lines(out))


def test_a_second_writer_on_the_same_file_is_refused(tasks, tmp_path):
    out = tmp_path / "traces.jsonl"
    with _locked_append(out):
        with pytest.raises(DistillError, match="another `distill generate` is writing"):
            generate(tasks, EchoBackend(), out, progress=False)


def test_bad_input_names_file_and_line(tasks, tmp_path):
    out = tmp_path / "traces.jsonl"
    with pytest.raises(DistillError, match="no such file"):
        generate(tmp_path / "missing.jsonl", EchoBackend(), out, progress=False)
    bad_tasks = tmp_path / "bad_tasks.jsonl"
    bad_tasks.write_text(tasks.read_text().splitlines()[0] + "\n{not json\n")
    with pytest.raises(DistillError, match=r"bad_tasks\.jsonl:2"):
        generate(bad_tasks, EchoBackend(), out, progress=False)
    # a corrupt line in the middle of the traces file is not a torn tail: refuse, naming the line
    out.write_text('{"task_id": "t0", "model": "m", "sample": 0}\n{oops\n{"task_id": "t1", "model": "m", "sample": 0}\n')
    with pytest.raises(DistillError, match=r"traces\.jsonl:2"):
        generate(tasks, EchoBackend(), out, progress=False)
    out.write_text('{"id": "t0"}\n')
    with pytest.raises(DistillError, match=r"traces\.jsonl:1: not a trace"):
        generate(tasks, EchoBackend(), out, progress=False)
    assert scan_traces(tmp_path / "nothing.jsonl") == (set(), {})


def test_cli_reports_bad_input_with_exit_status_2(tmp_path, capsys):
    from distill.cli import main

    rc = main(["generate", "--tasks", str(tmp_path / "nope.jsonl"), "--backend", "openai",
               "--base-url", "http://127.0.0.1:9/v1", "--model", "m", "--out", str(tmp_path / "o.jsonl")])
    assert rc == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(None, "t", 0) is None
    assert derive_seed(1, "t", 0) == derive_seed(1, "t", 0)
    seeds = {derive_seed(1, f"t{i}", s) for i in range(50) for s in range(8)}
    assert len(seeds) == 400 and all(0 <= x < 2**31 for x in seeds)
    assert derive_seed(1, "t", 0) != derive_seed(2, "t", 0)


def test_a_lone_surrogate_in_an_answer_is_written_as_an_escape():
    import json

    from data_gen.generate import trace_line

    record = {"task_id": "t", "model": "m", "sample": 0, "raw": "call \ud800 now"}
    line = trace_line(record)
    assert line.endswith(b"\n") and json.loads(line) == record
    assert trace_line({"raw": "café"}) == '{"raw": "café"}\n'.encode()  # the usual case keeps UTF-8 text
