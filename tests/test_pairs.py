"""`distill pairs`: corruption operators, pair mining rules, and the dataset TRL trains on."""

import json
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from data_gen.bfcl import import_bfcl
from data_gen.negatives import OPERATORS, corrupt
from data_gen.pairs import PairsConfig, gold_answer, mine_pairs
from eval.parse import render
from eval.tasks import task_from_dict
from eval.verify import judge


@pytest.fixture(scope="module")
def bfcl_tasks():
    cats = ["simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance", "live_simple", "live_multiple"]
    records = import_bfcl(cats, limit=60)
    return {r["id"]: task_from_dict(r) for r in records}


def _strict_gold(tasks):
    for t in tasks.values():
        g = gold_answer(t)
        correct, schema_valid, _, _ = judge(t, g.parsed())
        if correct and schema_valid:
            yield t, g.calls or []


@pytest.mark.parametrize("operator", list(OPERATORS))
def test_operator_output_fails_with_its_error_type(operator, bfcl_tasks):
    fn, intended = OPERATORS[operator]
    rng = random.Random(0)
    outcomes = Counter()
    for task, calls in _strict_gold(bfcl_tasks):
        answer = fn(task, calls, rng)
        if answer is None:
            continue
        correct, _, error, _ = judge(task, answer.parsed())
        outcomes["intended" if (not correct and error == intended) else f"{correct}:{error}"] += 1
    assert outcomes["intended"] >= 5, f"{operator} applied too rarely: {outcomes}"
    others = {k: v for k, v in outcomes.items() if k != "intended"}
    if operator == "wrong_value":
        # another value of the right type can happen to be acceptable too; corrupt() drops those
        assert set(others) <= {"True:ok"} and sum(others.values()) <= 0.01 * outcomes["intended"], outcomes
    else:
        assert not others, f"{operator}: {outcomes}"


def test_corrupt_only_returns_verified_negatives(bfcl_tasks):
    rng = random.Random(1)
    made = 0
    for task, calls in _strict_gold(bfcl_tasks):
        for op, (_, intended) in OPERATORS.items():
            out = corrupt(task, calls, op, rng)
            if out:
                answer, error, _ = out
                assert error == intended and not judge(task, answer.parsed())[0]
                made += 1
    assert made > 100


def _trace(task, sample, raw, model="teacher"):
    return {"task_id": task.id, "model": model, "sample": sample, "raw": raw}


def _teacher_traces(tasks):
    """Per task: the gold answer twice (one duplicate), a wrong value, and a prose answer."""
    traces = []
    for t in tasks.values():
        gold = gold_answer(t)
        good = render(gold.calls, "hermes") if gold.calls else "No available function fits."
        traces += [_trace(t, 0, good), _trace(t, 1, good)]
        if gold.calls:
            wrong = json.loads(json.dumps(gold.calls))
            first_arg = next(iter(wrong[0]["arguments"]), None)
            if first_arg:
                wrong[0]["arguments"][first_arg] = "definitely wrong"
                traces.append(_trace(t, 2, render(wrong, "python")))
            traces.append(_trace(t, 3, "Let me think about which tool to use."))
        else:
            traces.append(_trace(t, 2, render([{"name": next(iter(t.specs)), "arguments": {}}], "json")))
    return traces


def test_mining_rules(bfcl_tasks):
    teacher = _teacher_traces(bfcl_tasks)
    student = [dict(t, model="student", raw=t["raw"] + " <tool_call>{broken") for t in teacher if t["sample"] == 0]
    config = PairsConfig(synthetic=3, max_pairs_per_task=4, test_size=0.3, seed=7)
    rows, stats = mine_pairs(bfcl_tasks, teacher, student, config)
    assert rows
    by_task = Counter(r["task_id"] for r in rows)
    assert max(by_task.values()) <= 4
    split_of = {}
    for r in rows:
        assert split_of.setdefault(r["task_id"], r["split"]) == r["split"], "a task on both sides of the split"
        task = bfcl_tasks[r["task_id"]]
        assert r["chosen"] != r["rejected"]
        for side, want_correct in (("chosen", True), ("rejected", False)):
            msg = r[side][0]
            trace = {"task_id": task.id, "model": "x"}
            if msg["tool_calls"]:
                trace["tool_calls"] = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])} for c in msg["tool_calls"]]
            else:
                trace["raw"] = msg["content"]
            from eval.verify import verify

            v = verify(task, trace)
            assert v["correct"] is want_correct, (side, r)
            if side == "chosen":
                assert v["schema_valid"]
            else:
                assert v["error"] == r["rejected_error"]
    assert {"train", "test"} == {r["split"] for r in rows}
    assert {"teacher", "student", "synthetic"} == {r["rejected_source"] for r in rows}
    assert stats["repeated_outputs_skipped"] > 0  # the repeated gold answer is verified once, never two chosen
    # tools stay a JSON string; arguments stay JSON strings
    assert isinstance(rows[0]["tools"], str) and json.loads(rows[0]["tools"])[0]["type"] == "function"


def test_mix_and_error_weights(bfcl_tasks):
    teacher = _teacher_traces(bfcl_tasks)
    only_synth, _ = mine_pairs(bfcl_tasks, teacher, None, PairsConfig(synthetic=3, mix={"teacher": 0, "student": 0, "synthetic": 1}))
    assert only_synth and {r["rejected_source"] for r in only_synth} == {"synthetic"}
    no_prose, _ = mine_pairs(bfcl_tasks, teacher, None, PairsConfig(synthetic=3, error_weights={"no_call": 0}))
    assert "no_call" not in {r["rejected_error"] for r in no_prose}
    gold, _ = mine_pairs(bfcl_tasks, [], None, PairsConfig(chosen_from="gold", synthetic=2))
    assert gold and {r["chosen_source"] for r in gold} == {"gold"}


def test_cli_writes_a_dataset_trl_trains_on(tmp_path, bfcl_tasks, tiny_model_dir):
    tasks_path = tmp_path / "tasks.jsonl"
    tasks_path.write_text("".join(json.dumps(t.record) + "\n" for t in list(bfcl_tasks.values())[:40]))
    small = {k: v for k, v in list(bfcl_tasks.items())[:40]}
    traces_path = tmp_path / "teacher.jsonl"
    traces_path.write_text("".join(json.dumps(t) + "\n" for t in _teacher_traces(small)))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "pairs"
    r = subprocess.run(
        [sys.executable, "-m", "distill", "pairs", "--tasks", tasks_path, "--traces", traces_path, "--out", out, "--synthetic", "2", "--test-size", "0.2"],
        capture_output=True, text=True, env=env,
    )
    assert r.returncode == 0, r.stderr
    from datasets import load_from_disk

    dd = load_from_disk(str(out / "dataset"))
    assert set(dd) == {"train", "test"}
    assert set(dd["train"]["task_id"]).isdisjoint(dd["test"]["task_id"])
    card = (out / "README.md").read_text()
    from huggingface_hub import DatasetCard

    meta = DatasetCard(card).data.to_dict()
    assert "dpo" in meta["tags"]
    assert meta["license"] == "apache-2.0"  # the BFCL tasks' own license, read from their `source`
    from datasets import load_dataset

    local = load_dataset(str(out))  # the card's configs point at the folder's own files
    assert {s: len(local[s]) for s in local} == {s: len(dd[s]) for s in dd}
    assert f"train {len(dd['train'])} pairs" in card and "teacher" in card
    jsonl_rows = (out / "train.jsonl").read_text().splitlines()
    assert len(jsonl_rows) == len(dd["train"])

    # the tools of one row render alone: no fields merged in from other rows' tools (Arrow struct merging)
    row = dd["train"][0]
    assert json.loads(row["tools"]) == bfcl_tasks[row["task_id"]].tools

    # and TRL's DPOTrainer trains on it, rendering tools with the chat template
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = DPOConfig(
        output_dir=str(tmp_path / "dpo"), max_steps=3, per_device_train_batch_size=2, learning_rate=1e-2,
        use_cpu=True, bf16=False, report_to=[], logging_steps=1, max_length=2048, save_strategy="no",
        gradient_checkpointing=False,
    )
    trainer = DPOTrainer(model=model, args=args, train_dataset=dd["train"].select(range(6)), processing_class=tok)
    result = trainer.train()
    assert result.training_loss > 0
    assert any(not (p.detach() == before[n]).all() for n, p in model.named_parameters())
    rendered = tok.apply_chat_template(row["prompt"] + row["chosen"], tools=json.loads(row["tools"]), tokenize=False)
    assert bfcl_tasks[row["task_id"]].tools[0]["function"]["name"] in rendered


def test_push_to_hub_uploads_dataset_and_card_with_env_token(tmp_path, bfcl_tasks, monkeypatch, capsys):
    """Up to the upload call: the Hub is unreachable here, so the two upload functions are recorded instead."""
    from datasets import DatasetDict
    from huggingface_hub import DatasetCard

    from data_gen.pairs import pairs

    calls = []
    monkeypatch.setattr(DatasetDict, "push_to_hub", lambda self, repo, **kw: calls.append(("data", repo, kw, set(self))))
    monkeypatch.setattr(DatasetCard, "push_to_hub", lambda self, repo, **kw: calls.append(
        ("card", repo, kw, self.content[:3], self.data.configs, self.data.license)))
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_123")
    small = dict(list(bfcl_tasks.items())[:20])
    tasks_path = tmp_path / "tasks.jsonl"
    tasks_path.write_text("".join(json.dumps(t.record) + "\n" for t in small.values()))
    traces_path = tmp_path / "teacher.jsonl"
    traces_path.write_text("".join(json.dumps(t) + "\n" for t in _teacher_traces(small)))
    pairs(str(tasks_path), [str(traces_path)], str(tmp_path / "out"), config=PairsConfig(test_size=0.3), push_to_hub="me/fc-pairs", private=True,
          license="cc-by-4.0")
    assert [c[0] for c in calls] == ["data", "card"]
    assert calls[0][1] == "me/fc-pairs" and calls[0][2] == {"private": True, "token": "hf_secret_value_123"}
    assert calls[1][3] == "---" and calls[1][5] == "cc-by-4.0"
    # on the Hub the card points at the parquet shards push_to_hub wrote, not the local JSONL files
    assert [f["path"] for f in calls[1][4][0]["data_files"]] == ["data/train-*", "data/test-*"]
    out = capsys.readouterr()
    assert "hf_secret_value_123" not in out.out + out.err
    assert "hf_secret_value_123" not in (tmp_path / "out" / "README.md").read_text() + (tmp_path / "out" / "pairs_stats.json").read_text()


def test_no_malformed_rejected_on_irrelevance(bfcl_tasks):
    irrelevant = {k: t for k, t in bfcl_tasks.items() if not t.expected}
    teacher = [_trace(t, 0, "None of these tools help.") for t in irrelevant.values()]
    teacher += [_trace(t, 1, '<tool_call>{"name": "x", "arguments": {') for t in irrelevant.values()]
    rows, stats = mine_pairs(irrelevant, teacher, None, PairsConfig(synthetic=3))
    assert rows and "malformed" not in {r["rejected_error"] for r in rows}
    assert stats["malformed_on_irrelevance_skipped"] == len(irrelevant)
