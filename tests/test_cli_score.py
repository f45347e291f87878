"""`distill import bfcl`, `distill import jsonl` and `distill score` end to end, as a user runs them."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from distill.cli import build_parser
from eval.parse import render


def distill(*args, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "distill", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd)


def _subcommand_paths(parser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield (*prefix, name)
                yield from _subcommand_paths(sub, (*prefix, name))


def test_every_subcommand_explains_itself():
    paths = list(_subcommand_paths(build_parser()))
    assert ("import", "bfcl") in paths and ("score",) in paths
    top = distill("--help")
    assert top.returncode == 0 and "the flow" in top.stdout
    for path in paths:
        r = distill(*path, "--help")
        assert r.returncode == 0, (path, r.stderr)
        assert "usage: distill " + " ".join(path) in r.stdout
        assert "(default: None)" not in r.stdout, path  # an unset flag's help says what unset means instead
        # every flag has help text
        parser = build_parser()
        for name in path:
            parser = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[name]
        for action in parser._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"distill {' '.join(path)} {action.option_strings[0]} has no help"


@pytest.fixture(scope="module")
def tasks_file(tmp_path_factory):
    out = tmp_path_factory.mktemp("tasks") / "tasks.jsonl"
    r = distill("import", "bfcl", "--categories", "simple_python,parallel,irrelevance,live_multiple", "--limit", "15", "--out", out)
    assert r.returncode == 0, r.stderr
    assert "wrote 60 tasks" in r.stdout
    return out


def test_import_bfcl_converts_types_and_keeps_ids(tasks_file):
    tasks = [json.loads(line) for line in tasks_file.read_text().splitlines()]
    first = tasks[0]
    assert first["id"] == "simple_python_0" and first["category"] == "simple_python"
    params = first["tools"][0]["function"]["parameters"]
    assert params["type"] == "object" and params["additionalProperties"] is False
    types = {s.get("type") for t in tasks for tool in t["tools"] for s in tool["function"]["parameters"]["properties"].values()}
    assert not types & {"dict", "float", "tuple", "any"}
    assert all(t["expected"] == [] for t in tasks if t["category"] == "irrelevance")
    assert all(t["source"].startswith("bfcl-eval==") for t in tasks)


def test_import_bfcl_unknown_category_is_a_clear_error(tmp_path):
    r = distill("import", "bfcl", "--categories", "simple_pyton", "--out", tmp_path / "x.jsonl")
    assert r.returncode == 2 and "unknown BFCL category 'simple_pyton'" in r.stderr
    assert not (tmp_path / "x.jsonl").exists()


def _traces(tasks_file):
    tasks = [json.loads(line) for line in tasks_file.read_text().splitlines()]
    traces = []
    for i, t in enumerate(tasks):
        calls = [{"name": e["name"], "arguments": {k: next(v for v in vs if v != "") for k, vs in e["arguments"].items() if any(v != "" for v in vs)}} for e in t["expected"]]
        if i % 3 == 0:
            raw = "I am not sure."
        elif calls:
            raw = render(calls, ["hermes", "python", "json"][i % 3])
        else:
            raw = "No tool fits this request."
        traces.append({"task_id": t["id"], "model": "teacher", "sample": 0, "raw": raw, "latency_s": 0.1 * (i % 5 + 1), "completion_tokens": 10})
    return traces


def test_score_writes_report_verdicts_summary_and_plots(tasks_file, tmp_path):
    traces = _traces(tasks_file)
    tp = tmp_path / "traces.jsonl"
    tp.write_text("".join(json.dumps(t) + "\n" for t in traces))
    r = distill("score", "--tasks", tasks_file, "--traces", tp, "--out", tmp_path / "rep")
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    verdicts = [json.loads(line) for line in (tmp_path / "rep" / "verdicts.jsonl").read_text().splitlines()]
    assert report["n"] == len(verdicts) == len(traces)
    assert report["accuracy"] == pytest.approx(sum(v["correct"] for v in verdicts) / len(verdicts), abs=1e-6)
    assert sum(report["errors"].values()) == report["n"]
    assert report["errors"]["no_call"] > 0 and report["errors"]["ok"] > 0
    assert set(report["by_category"]) == {"simple_python", "parallel", "irrelevance", "live_multiple"}
    assert report["throughput"]["latency_p50_s"] == pytest.approx(0.3)
    summary = (tmp_path / "rep" / "summary.md").read_text()
    assert f"| accuracy (BFCL rules) | {100 * report['accuracy']:.1f}% |" in summary
    for png in ("accuracy_by_category.png", "errors.png"):
        assert (tmp_path / "rep" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_score_errors_name_the_line(tasks_file, tmp_path):
    traces = _traces(tasks_file)[:3]
    tp = tmp_path / "traces.jsonl"
    bad = dict(traces[1], task_id="no_such_task")
    tp.write_text(json.dumps(traces[0]) + "\n" + json.dumps(bad) + "\n")
    r = distill("score", "--tasks", tasks_file, "--traces", tp, "--out", tmp_path / "rep")
    assert r.returncode == 2 and f"{tp}:2: trace for unknown task 'no_such_task'" in r.stderr
    tp.write_text(json.dumps(traces[0]) + "\n[1, 2]\n" + json.dumps(traces[2]) + "\n")
    r = distill("score", "--tasks", tasks_file, "--traces", tp, "--out", tmp_path / "rep")
    assert r.returncode == 2 and f"{tp}:2: expected a JSON object" in r.stderr
    assert not (tmp_path / "rep").exists(), "nothing is written when the input is bad"


def test_score_splits_models(tasks_file, tmp_path):
    traces = _traces(tasks_file)[:6]
    both = traces + [dict(t, model="org/student") for t in traces]
    tp = tmp_path / "traces.jsonl"
    tp.write_text("".join(json.dumps(t) + "\n" for t in both))
    r = distill("score", "--tasks", tasks_file, "--traces", tp, "--out", tmp_path / "rep", "--no-plots")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "rep" / "org_student" / "report.json").read_text())["model"] == "org/student"
    assert json.loads((tmp_path / "rep" / "teacher" / "report.json").read_text())["n"] == 6


def test_import_jsonl_xlam_rows(tmp_path):
    rows = [
        {
            "query": "Where can I find live giveaways for beta access?",
            "tools": json.dumps([{"name": "live_giveaways_by_type", "description": "Giveaways by type.",
                                  "parameters": {"type": {"description": "beta, game, loot", "type": "str", "default": "game"},
                                                 "limit": {"description": "how many", "type": "int, optional"},
                                                 "ids": {"description": "ids", "type": "List[int]"}}}]),
            "answers": json.dumps([{"name": "live_giveaways_by_type", "arguments": {"type": "beta", "ids": [1, 2]}}]),
        }
    ]
    src = tmp_path / "xlam.jsonl"
    src.write_text(json.dumps(rows[0]) + "\n")
    out = tmp_path / "tasks.jsonl"
    r = distill("import", "jsonl", src, "--out", out)
    assert r.returncode == 0, r.stderr
    task = json.loads(out.read_text())
    params = task["tools"][0]["function"]["parameters"]
    assert params["properties"]["ids"] == {"type": "array", "items": {"type": "integer"}, "description": "ids"}
    assert params["required"] == ["ids"]
    assert task["expected"][0]["arguments"] == {"type": ["beta"], "ids": [[1, 2]], "limit": [""]}
    # the imported task scores like any other
    tp = tmp_path / "traces.jsonl"
    tp.write_text(json.dumps({"task_id": task["id"], "model": "m", "raw": '[live_giveaways_by_type(type="Beta", ids=[1, 2])]'}) + "\n")
    r = distill("score", "--tasks", out, "--traces", tp, "--out", tmp_path / "rep", "--no-plots")
    assert r.returncode == 0 and json.loads((tmp_path / "rep" / "report.json").read_text())["accuracy"] == 1.0
    src.write_text(json.dumps({**rows[0], "id": "a"}) + "\n" + json.dumps({**rows[0], "id": "a"}) + "\n")
    r = distill("import", "jsonl", src, "--out", tmp_path / "dup.jsonl")
    assert r.returncode == 2 and "xlam.jsonl:2: duplicate task id 'a' (first at line 1)" in r.stderr
    assert not (tmp_path / "dup.jsonl").exists()
    src.write_text(json.dumps({**rows[0], "answers": "[{bad"}) + "\n")
    r = distill("import", "jsonl", src, "--out", tmp_path / "bad.jsonl")
    assert r.returncode == 2 and "xlam.jsonl:1: key 'answers' is a string but not valid JSON" in r.stderr


def test_the_cli_module_runs_as_a_script():
    for module in ("distill", "distill.cli"):
        proc = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0 and "usage: distill" in proc.stdout, (module, proc.stdout[-500:], proc.stderr[-500:])
