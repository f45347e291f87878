"""Task composition (data_gen/compose.py) on real BFCL live_simple/live_multiple tasks: every composed task loads,
its joined answer key is correct by the verifier in any order and in any output format the parser reads, the
wrong answers a student would give are still wrong, and drawing is deterministic per seed."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest

from data_gen.compose import (
    PARALLEL,
    PARALLEL_MULTIPLE,
    NotComposable,
    compose,
    compose_tasks,
    mix_composed,
    why_not_source,
)
from eval.io import DistillError
from eval.tasks import load_tasks, task_from_dict
from eval.verify import verify


@pytest.fixture(scope="module")
def live_tasks() -> list[dict]:
    from data_gen.bfcl import import_bfcl

    return import_bfcl(["live_simple", "live_multiple"])


@pytest.fixture(scope="module")
def composed(live_tasks) -> list[dict]:
    return compose_tasks(live_tasks, 300, k=(2, 3), seed=0)


def _hermes(calls: list[dict]) -> str:
    return "".join(f'<tool_call>\n{json.dumps({"name": c["name"], "arguments": c["arguments"]})}\n</tool_call>\n'
                   for c in calls)


def _render(expected: list[dict], alt: int) -> list[dict]:
    """Expected calls with the alt-th acceptable non-empty value of each argument (optional ones kept)."""
    calls = []
    for e in expected:
        args = {}
        for name, values in e["arguments"].items():
            real = [v for v in values if v != ""]
            if real:
                args[name] = real[alt % len(real)]
        calls.append({"name": e["name"], "arguments": args})
    return calls


def test_composed_tasks_load_and_their_gold_answers_are_correct(live_tasks, composed):
    assert len(composed) == 300
    by_id = {r["id"]: r for r in live_tasks}
    rng = random.Random(0)
    for record in composed:
        task = task_from_dict(json.loads(json.dumps(record)), "roundtrip")  # survives JSONL as written
        sources = [by_id[i] for i in record["composed_from"]]
        assert record["id"] == "composed:" + "+".join(record["composed_from"])
        assert 2 <= len(sources) <= 3 and len(task.expected) == len(sources)
        assert task.expected == [s["expected"][0] for s in sources]
        names = {c["name"] for c in task.expected}
        assert task.category == (PARALLEL if len(names) == 1 else PARALLEL_MULTIPLE)
        tool_names = [t["function"]["name"] for t in task.tools]
        assert len(tool_names) == len(set(tool_names))
        assert set(tool_names) == {t["function"]["name"] for s in sources for t in s["tools"]}
        for s in sources:
            assert s["messages"][0]["content"].strip()[:40].lower()[1:] in task.messages[0]["content"].lower()
        # The answer key, as a student would write it: each call once, in any order, any acceptable value,
        # as Hermes text (through the parser) or as structured calls.
        for alt in (0, 1):
            calls = _render(task.expected, alt)
            rng.shuffle(calls)
            for trace in ({"tool_calls": calls}, {"raw": _hermes(calls)}):
                verdict = verify(task, {"task_id": task.id, "model": "gold", **trace})
                assert verdict["correct"], (task.id, trace, verdict)


def test_wrong_answers_to_composed_tasks_stay_wrong(composed):
    """Answering only one of the questions, or one question twice, is wrong."""
    for record in composed[:100]:
        task = task_from_dict(record)
        calls = _render(task.expected, 0)
        first_only = verify(task, {"task_id": task.id, "model": "m", "tool_calls": calls[:1]})
        assert not first_only["correct"] and first_only["error"] != "ok"
        doubled = verify(task, {"task_id": task.id, "model": "m", "tool_calls": [calls[0]] * len(calls)})
        assert not doubled["correct"]


def test_both_kinds_and_both_sizes_come_out_and_drawing_is_deterministic(live_tasks, composed):
    kinds = Counter(r["category"] for r in composed)
    sizes = Counter(len(r["expected"]) for r in composed)
    assert kinds[PARALLEL] >= 60 and kinds[PARALLEL_MULTIPLE] >= 60, kinds
    assert set(sizes) == {2, 3}
    assert len({r["id"] for r in composed}) == len(composed)
    assert compose_tasks(live_tasks, 300, k=(2, 3), seed=0) == composed
    other = compose_tasks(live_tasks, 300, k=(2, 3), seed=1)
    assert {r["id"] for r in other} != {r["id"] for r in composed}
    only_pairs = compose_tasks(live_tasks, 50, k=(2, 2), parallel_share=1.0, max_tools=4, seed=0)
    assert {len(r["expected"]) for r in only_pairs} == {2} and all(len(r["tools"]) <= 4 for r in only_pairs)
    assert {r["category"] for r in only_pairs} == {PARALLEL}


def test_mix_adds_the_share_asked_for(live_tasks):
    originals = live_tasks[:140]
    mixed, wanted = mix_composed(originals, 0.3, seed=0)
    assert mixed[:140] == originals and wanted == 60
    composed = mixed[140:]
    assert len(composed) == 60 and all(r["id"].startswith("composed:") for r in composed)
    assert all(set(r["composed_from"]) <= {o["id"] for o in originals} for r in composed)
    assert mix_composed(originals, 0.0, seed=0) == (originals, 0)
    with pytest.raises(DistillError, match=r"share must be in \[0, 1\)"):
        mix_composed(originals, 1.0)
    with pytest.raises(DistillError, match="already hold composed tasks"):
        mix_composed(mixed, 0.3, sources=originals, seed=0)


def test_sources_that_cannot_be_composed_are_named(live_tasks):
    one = next(r for r in live_tasks if why_not_source(r) is None)
    other = next(r for r in live_tasks if why_not_source(r) is None and r["id"] != one["id"])
    with_system = next(r for r in live_tasks if len(r["messages"]) > 1)
    with pytest.raises(DistillError, match=rf"task {with_system['id']!r} cannot be composed: it needs exactly one "
                                           "user message"):
        compose([one, with_system])
    two_calls = {**other, "id": "two_calls", "expected": other["expected"] * 2}
    with pytest.raises(DistillError, match="task 'two_calls' cannot be composed: it expects 2 calls, not 1"):
        compose([one, two_calls])
    no_call = {**other, "id": "irrelevant", "expected": []}
    with pytest.raises(DistillError, match="task 'irrelevant' cannot be composed: it expects 0 calls"):
        compose([no_call, one])
    with pytest.raises(DistillError, match="the same task twice"):
        compose([one, one])
    with pytest.raises(DistillError, match="at least 2 tasks"):
        compose([one])


def test_tools_with_the_same_name_but_different_definitions_are_not_composed(live_tasks):
    one = next(r for r in live_tasks if why_not_source(r) is None)
    name = one["expected"][0]["name"]
    clone = json.loads(json.dumps(one))
    clone["id"] = "clone"
    clone["messages"][0]["content"] = "Another question entirely."
    for tool in clone["tools"]:
        if tool["function"]["name"] == name:
            tool["function"]["description"] = "a different tool with the same name"
    with pytest.raises(NotComposable, match=rf"tasks {one['id']!r} and 'clone' define different tools named {name!r}"):
        compose([one, clone])
    # compose_tasks skips such pairs instead of failing.
    assert compose_tasks([one, clone], 5, k=(2, 2), seed=0) == []


def test_cli_compose(live_tasks, tmp_path, capsys):
    from distill.cli import main
    from eval.io import write_jsonl

    src = tmp_path / "train.jsonl"
    write_jsonl(src, live_tasks[:70] + live_tasks[-70:])
    out = tmp_path / "train_composed.jsonl"
    argv = ["compose", "--tasks", str(src), "--k", "2-3", "--share", "0.3", "--seed", "0", "--out", str(out)]
    assert main(argv) == 0
    msg = capsys.readouterr().out
    assert "140 from" in msg and "+ 60 composed" in msg
    tasks = load_tasks(out)
    assert len(tasks) == 200 and sum(t.category.startswith("composed_") for t in tasks.values()) == 60
    first = out.read_bytes()
    assert main(argv) == 0 and out.read_bytes() == first  # same seed, same file

    assert main([*argv[:-1], str(tmp_path / "x.jsonl"), "--k", "3-2"]) == 2
    assert "k must be a range" in capsys.readouterr().err and not (tmp_path / "x.jsonl").exists()
    assert main([*argv[:-1], str(tmp_path / "x.jsonl"), "--categories", "simple_python"]) == 2
    assert "no tasks of category simple_python" in capsys.readouterr().err
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({**live_tasks[0], "expected": [{"name": "nope", "arguments": {}}]}) + "\n")
    assert main(["compose", "--tasks", str(bad), "--out", str(tmp_path / "y.jsonl")]) == 2
    err = capsys.readouterr().err
    assert f"bad.jsonl:1 (task {live_tasks[0]['id']!r})" in err and not (tmp_path / "y.jsonl").exists()
