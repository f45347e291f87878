"""On-policy pairs: the student's sampled answers mined into labelled pair kinds, the off-policy filter and
shared-prefix trimming (Step-DPO), each checked against what TRL's DPOTrainer sees."""

from __future__ import annotations

import json
import logging
import math
from collections import Counter
from pathlib import Path

import pytest
import torch

from data_gen.bfcl import import_bfcl
from data_gen.pairs import KINDS, PairsConfig, gold_answer, mine_pairs, pair_kind, pairs
from data_gen.policy import Policy, PolicySpec, answer_ids, to_text_rows
from eval.io import DistillError
from eval.parse import render
from eval.tasks import task_from_dict
from eval.verify import verify


@pytest.fixture(scope="module")
def tasks():
    records = import_bfcl(["simple_python", "irrelevance"], limit=6)
    return {r["id"]: task_from_dict(r) for r in records}


def _wrong_value(calls: list[dict]) -> list[dict]:
    wrong = json.loads(json.dumps(calls))
    arg = next(iter(wrong[0]["arguments"]))
    wrong[0]["arguments"][arg] = 987654 if isinstance(wrong[0]["arguments"][arg], (int, float)) else "elsewhere"
    return wrong


def student_samples(tasks) -> list[dict]:
    """What `distill eval --samples 4 --temperature 0.8` writes for a student, one trace per sample: on call tasks
    a correct call (on even tasks only), a wrong value, a broken call and prose; on irrelevance tasks a call to a
    listed tool and (on even tasks only) an abstention."""
    traces = []
    for n, t in enumerate(tasks.values()):
        gold = gold_answer(t)
        if gold.calls:
            outs = [render(_wrong_value(gold.calls), "hermes"), '<tool_call>\n{"name": "' + gold.calls[0]["name"],
                    "I would need to look that up first."]
        else:
            outs = [render([{"name": next(iter(t.specs)), "arguments": {}}], "hermes")]
        if n % 2 == 0:
            outs.insert(1, render(gold.calls, "hermes") if gold.calls else "None of these functions fit the question.")
        traces += [{"task_id": t.id, "model": "student-sft", "sample": i, "raw": o} for i, o in enumerate(outs)]
    return traces


def _answer_trace(task, message: dict) -> dict:
    trace = {"task_id": task.id, "model": "x"}
    if message.get("tool_calls"):
        trace["tool_calls"] = [{"name": c["function"]["name"], "arguments": json.loads(c["function"]["arguments"])}
                               for c in message["tool_calls"]]
    else:
        trace["raw"] = message["content"]
    return trace


def test_pair_kinds_are_mined_and_labelled_from_the_students_samples(tasks):
    samples = student_samples(tasks)
    teacher = [{"task_id": t.id, "model": "teacher", "sample": 0, "raw": "Let me think."} for t in tasks.values()]
    rows, stats = mine_pairs(tasks, teacher, samples, PairsConfig(on_policy=True, chosen_from="gold", synthetic=3))
    assert {r["pair_kind"] for r in rows} == set(KINDS)
    assert {r["rejected_source"] for r in rows} == {"student"}, "on-policy: no teacher or synthetic rejected answers"
    student_right = {t.id for n, t in enumerate(tasks.values()) if n % 2 == 0}
    for r in rows:
        task = tasks[r["task_id"]]
        chosen, rejected = verify(task, _answer_trace(task, r["chosen"][0])), verify(task, _answer_trace(task, r["rejected"][0]))
        assert chosen["correct"] and chosen["schema_valid"] and not rejected["correct"]
        assert rejected["error"] == r["rejected_error"]
        want = ("hallucinated_call" if not task.expected else "missed_call" if rejected["error"] == "no_call"
                else "wrong_call")
        assert r["pair_kind"] == want == pair_kind(task, rejected["error"])
        # the student's own correct sample is the chosen answer where it has one; the verified gold elsewhere
        assert r["chosen_source"] == ("student" if task.id in student_right else "gold")
        if not task.expected:
            assert not r["chosen"][0]["tool_calls"], "irrelevance: the chosen answer abstains"
            assert r["rejected"][0]["tool_calls"], "irrelevance: the rejected answer calls"
    kinds = Counter(r["pair_kind"] for r in rows)
    n_call, n_irr = sum(bool(t.expected) for t in tasks.values()), sum(not t.expected for t in tasks.values())
    assert kinds == {"wrong_call": 2 * n_call, "missed_call": n_call, "hallucinated_call": n_irr}
    assert stats["chosen_from_student"] == len(student_right)


def test_kinds_keep_exactly_the_pairs_of_those_kinds(tasks):
    samples = student_samples(tasks)
    everything, _ = mine_pairs(tasks, [], samples, PairsConfig(on_policy=True, chosen_from="gold"))
    only, stats = mine_pairs(tasks, [], samples, PairsConfig(on_policy=True, chosen_from="gold",
                                                             kinds=("hallucinated_call", "missed_call")))
    key = lambda r: (r["task_id"], json.dumps(r["chosen"]), json.dumps(r["rejected"]))  # noqa: E731
    assert sorted(map(key, only)) == sorted(key(r) for r in everything if r["pair_kind"] != "wrong_call")
    assert stats["rejected_kind_filtered"] == sum(r["pair_kind"] == "wrong_call" for r in everything)


def test_without_on_policy_the_student_is_not_chosen_unless_asked(tasks):
    samples = student_samples(tasks)
    rows, _ = mine_pairs(tasks, [], samples, PairsConfig(chosen_from="gold", synthetic=1))
    assert {r["chosen_source"] for r in rows} == {"gold"}
    assert {"student", "synthetic"} <= {r["rejected_source"] for r in rows}
    assert {r["pair_kind"] for r in rows} <= set(KINDS)
    asked, _ = mine_pairs(tasks, [], samples, PairsConfig(chosen_from="student-or-gold", synthetic=1))
    assert {r["chosen_source"] for r in asked} == {"student", "gold"}


# --- the policy: log-probabilities as TRL computes them, the off-policy filter ------------------------------


@pytest.fixture(scope="module")
def rows(tasks):
    return mine_pairs(tasks, [], student_samples(tasks), PairsConfig(on_policy=True, chosen_from="gold"))[0]


def test_answer_ids_are_what_trls_dpo_trainer_tokenizes(rows, tiny_model_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from distill.train_data import for_stage

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    data = for_stage(Dataset.from_list([{k: v for k, v in r.items() if k != "split"} for r in rows]), "dpo")
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], max_length=4096,
                     gradient_checkpointing=False, per_device_train_batch_size=2)
    trainer = DPOTrainer(model=AutoModelForCausalLM.from_pretrained(tiny_model_dir), args=args, train_dataset=data,
                         processing_class=tok)
    for i, row in enumerate(rows):
        tokenized = trainer.train_dataset[i]
        for side in ("chosen", "rejected"):
            prompt, answer = answer_ids(tok, row["prompt"], row["tools"], row[side], f"row {i}")
            assert (prompt, answer) == (tokenized["prompt_ids"], tokenized[f"{side}_ids"]), (i, side)


def test_answer_nll_is_the_summed_log_probability_of_the_answer_tokens(rows, tiny_adapter_dir):
    policy = Policy.load(PolicySpec(adapter=str(tiny_adapter_dir), batch_size=3), with_model=True)
    nll = policy.answer_nll(rows, "rejected", progress=False)
    for i in (0, len(rows) // 2, len(rows) - 1):  # one forward pass per row, no padding
        prompt, answer = answer_ids(policy.tokenizer, rows[i]["prompt"], rows[i]["tools"], rows[i]["rejected"], "r")
        ids = torch.tensor([prompt + answer])
        with torch.inference_mode():
            logps = torch.log_softmax(policy.model(ids).logits[0, :-1].float(), -1)
        want = -logps[len(prompt) - 1 :].gather(-1, ids[0, len(prompt) :, None]).sum().item()
        assert nll[i] == pytest.approx(want, rel=1e-4, abs=1e-3)
    assert all(x > 0 for x in nll)


def _write(tmp_path, tasks, traces):
    (tmp_path / "tasks.jsonl").write_text("".join(json.dumps(t.record) + "\n" for t in tasks.values()))
    (tmp_path / "student.jsonl").write_text("".join(json.dumps(t) + "\n" for t in traces))
    return str(tmp_path / "tasks.jsonl"), [str(tmp_path / "student.jsonl")]


def test_the_off_policy_filter_drops_exactly_the_rows_above_the_threshold(tasks, rows, tiny_adapter_dir, tmp_path):
    from datasets import load_from_disk

    spec = PolicySpec(adapter=str(tiny_adapter_dir))
    nll = Policy.load(spec, with_model=True).answer_nll(rows, "rejected", progress=False)
    threshold = sorted(nll)[len(nll) // 2]
    tasks_path, student = _write(tmp_path, tasks, student_samples(tasks))
    config = dict(on_policy=True, chosen_from="gold", test_size=0)
    pairs(tasks_path, [], str(tmp_path / "all"), student, PairsConfig(**config))
    summary = pairs(tasks_path, [], str(tmp_path / "kept"), student, PairsConfig(**config, max_rejected_nll=threshold),
                    policy=spec)
    full = load_from_disk(str(tmp_path / "all" / "dataset"))["train"].to_list()
    kept = load_from_disk(str(tmp_path / "kept" / "dataset"))["train"].to_list()
    assert [r["rejected_nll"] for r in kept] == pytest.approx([x for x in nll if x <= threshold], abs=1e-3)
    assert [{k: v for k, v in r.items() if k != "rejected_nll"} for r in kept] == [
        r for r, x in zip(full, nll, strict=True) if x <= threshold]
    f = summary["policy_filters"]["off_policy_filter"]
    assert f["rows_dropped"] == sum(x > threshold for x in nll) > 0
    by_kind = f["rejected_nll"]["by_pair_kind"]
    assert sum(v["n"] for v in by_kind.values()) == len(rows) == f["rows_scored"]
    wrong = sorted(x for r, x in zip(rows, nll, strict=True) if r["pair_kind"] == "wrong_call")
    assert by_kind["wrong_call"]["p50"] == pytest.approx(wrong[len(wrong) // 2], abs=0.01)
    assert f["rejected_nll"]["by_rejected_source"]["student"]["n"] == len(rows)
    with pytest.raises(DistillError, match="every pair's rejected answer is less likely"):
        pairs(tasks_path, [], str(tmp_path / "none"), student, PairsConfig(**config, max_rejected_nll=min(nll) / 2),
              policy=spec)
    assert not (tmp_path / "none").exists()
    stats = json.loads((tmp_path / "kept" / "pairs_stats.json").read_text())
    assert stats["policy_filters"]["policy"]["adapter"] == str(tiny_adapter_dir)
    assert "rejected_nll" in (tmp_path / "kept" / "README.md").read_text()


# --- shared-prefix trimming -------------------------------------------------------------------------------


def _assistant(tok, row) -> str:
    """The chosen conversation as TRL's conversational path would render it."""
    from data_gen.messages import clean_messages

    tools = json.loads(row["tools"])
    return tok.apply_chat_template(clean_messages(row["prompt"] + row["chosen"], "x"), tools=tools, tokenize=False)


def test_trimming_moves_the_shared_beginning_of_near_identical_calls_only(rows, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    untrimmed, st0 = to_text_rows(tok, rows, None)
    trimmed, st = to_text_rows(tok, rows, 0.5)
    assert st0["rows_trimmed"] == 0 and st["rows_trimmed"] > 0
    for row, plain, cut in zip(rows, untrimmed, trimmed, strict=True):
        # the text form of an untrimmed row is the conversation TRL would have rendered, ending at the turn's end
        assert plain["prompt"] + plain["chosen"] == _assistant(tok, row).rstrip("\n")
        assert plain["shared_prefix"] == ""
        both_calls = bool(row["chosen"][0]["tool_calls"]) and bool(row["rejected"][0]["tool_calls"])
        if cut["shared_prefix"]:
            assert both_calls and row["pair_kind"] == "wrong_call"
            assert cut["prompt"] == plain["prompt"] + cut["shared_prefix"]
            assert cut["prompt"] + cut["chosen"] == plain["prompt"] + plain["chosen"]
            assert cut["prompt"] + cut["rejected"] == plain["prompt"] + plain["rejected"]
            shared_tokens = len(tok(cut["shared_prefix"], add_special_tokens=False).input_ids)
            shorter = min(len(tok(plain[s], add_special_tokens=False).input_ids) for s in ("chosen", "rejected"))
            assert shared_tokens >= 0.5 * shorter - 1
        else:
            assert cut == plain, "rows that are not trimmed are the same as without trimming"
    # trimmed exactly where both answers are calls sharing at least half of the shorter one's tokens
    for row, plain, cut in zip(rows, untrimmed, trimmed, strict=True):
        ids = {s: tok(plain["prompt"] + plain[s]).input_ids for s in ("chosen", "rejected")}
        start = len(tok(plain["prompt"]).input_ids)
        common = next((k for k, (a, b) in enumerate(zip(ids["chosen"], ids["rejected"], strict=False)) if a != b), None)
        share = (common - start) / (min(map(len, ids.values())) - start)
        both_calls = bool(row["chosen"][0]["tool_calls"]) and bool(row["rejected"][0]["tool_calls"])
        assert bool(cut["shared_prefix"]) == (both_calls and share >= 0.5), (row["task_id"], share)
    assert any(r["chosen"][0]["tool_calls"] and r["rejected"][0]["tool_calls"] and not c["shared_prefix"]
               for r, c in zip(rows, trimmed, strict=True)), "the sample has calls that share too little"
    # a call vs a malformed call, prose or an abstention is never trimmed
    assert all(not c["shared_prefix"] for r, c in zip(rows, trimmed, strict=True) if r["pair_kind"] != "wrong_call")
    assert any(not c["shared_prefix"] for r, c in zip(rows, trimmed, strict=True) if r["pair_kind"] == "wrong_call")
    every, _ = to_text_rows(tok, rows, 0.01)
    assert sum(bool(r["shared_prefix"]) for r in every) >= st["rows_trimmed"]


def test_trimmed_rows_train_through_trls_dpo_trainer(rows, tiny_model_dir, tmp_path, caplog):
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from distill.train_data import for_stage

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    text, st = to_text_rows(tok, rows, 0.5)
    data = for_stage(Dataset.from_list([{k: v for k, v in r.items() if k != "split"} for r in text]), "dpo")
    assert data.column_names == ["prompt", "chosen", "rejected", "tools"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = DPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[], max_length=4096,
                     gradient_checkpointing=False, per_device_train_batch_size=4, max_steps=2, learning_rate=1e-2,
                     logging_steps=1, save_strategy="no")
    with caplog.at_level(logging.WARNING):
        trainer = DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tok)
    assert "not a prefix" not in caplog.text, "TRL's prompt ends exactly where the trimmed prompt ends"
    for i, row in enumerate(text):
        t = trainer.train_dataset[i]
        assert t["prompt_ids"] == tok(row["prompt"]).input_ids
        assert tok.decode(t["chosen_ids"]) == row["chosen"] and tok.decode(t["rejected_ids"]) == row["rejected"]
        assert t["chosen_ids"][-1] == tok.eos_token_id and t["chosen_ids"].count(tok.eos_token_id) == 1
        if row["shared_prefix"]:
            # the shared tokens are no longer part of either answer
            whole = answer_ids(tok, rows[i]["prompt"], rows[i]["tools"], rows[i]["chosen"], "r")[1]
            assert len(t["chosen_ids"]) < len(whole) - 3
    result = trainer.train()
    assert torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(p.detach(), before[n]) for n, p in model.named_parameters())
    with pytest.raises(DistillError, match="train DPO only"):
        for_stage(Dataset.from_list([{k: v for k, v in r.items() if k != "split"} for r in text]), "sft")


def test_a_conversational_prompt_cannot_end_inside_the_assistant_turn_in_trls_dpo(tiny_model_dir):
    """Why trimmed rows are text: TRL renders a conversational DPO prompt with add_generation_prompt=True, which
    closes a partial assistant message and opens a new turn."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    partial = [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": '<tool_call>\n{"name"'}]
    rendered = tok.apply_chat_template(partial, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith('{"name"<|im_end|>\n<|im_start|>assistant\n')


# --- trimmed pairs through `distill train` -----------------------------------------------------------------

RECIPES = Path(__file__).resolve().parents[1] / "recipes" / "debug"


@pytest.fixture(scope="module")
def trimmed_pairs(tasks, tiny_adapter_dir, tmp_path_factory):
    """What `distill pairs --on-policy --trim-shared-prefix --policy-adapter RUN` writes for the tiny student."""
    out = tmp_path_factory.mktemp("trimmed")
    tasks_path, student = _write(out, tasks, student_samples(tasks))
    summary = pairs(tasks_path, [], str(out / "pairs"), student,
                    PairsConfig(on_policy=True, chosen_from="gold", test_size=0, trim_shared_prefix=True),
                    policy=PolicySpec(adapter=str(tiny_adapter_dir)))
    assert summary["policy_filters"]["prefix_trim"]["rows_trimmed"] > 0
    return out / "pairs"


def _dpo_argv(pairs_dir, model, adapter, out, *flags) -> list[str]:
    """One DPO step from the tiny SFT adapter over every row (24 pairs in one batch; prompts up to 712 tokens)."""
    return [str(RECIPES / "tiny_cpu_dpo.yaml"), "--model_name_or_path", str(model), "--dataset_path", str(pairs_dir),
            "--init_adapter", str(adapter), "--output_dir", str(out), "--max_steps", "1", "--max_length", "1024",
            "--per_device_train_batch_size", "32", "--report_to", "none", *flags]


def _distill_train(argv: list[str]):
    """`distill train ARGV` through the command line, returning the trainer it ran (exit status 0 asserted)."""
    from distill import cli, train

    ran, run_stage = [], train.run_stage
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train, "run_stage", lambda recipe, **kw: ran.append(run_stage(recipe, **kw)) or ran[-1])
        assert cli.main(["train", *argv]) == 0
    return ran[-1]


@pytest.fixture(scope="module")
def trimmed_dpo(trimmed_pairs, tiny_model_dir, tiny_adapter_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("trimmed-dpo") / "dpo"
    return _distill_train(_dpo_argv(trimmed_pairs, tiny_model_dir, tiny_adapter_dir, out)), out


def test_trimmed_pairs_train_one_dpo_step_through_distill_train(trimmed_pairs, trimmed_dpo, tiny_adapter_dir):
    from datasets import load_from_disk
    from safetensors.torch import load_file
    from transformers import AutoTokenizer

    from distill.preflight import percentiles

    trainer, out = trimmed_dpo
    rows = load_from_disk(str(trimmed_pairs / "dataset"))["train"]
    info = json.loads((out / "run.json").read_text())
    assert info["status"] == "finished" and info["global_step"] == 1
    assert math.isfinite(info["metrics"]["train_loss"])
    before, after = load_file(tiny_adapter_dir / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert before.keys() == after.keys() and any(not torch.equal(before[k], after[k]) for k in before)
    # the pre-flight measured the rows as TRL's text path tokenized them (prompt, chosen, rejected ids)
    tokenized = trainer.train_dataset
    assert len(tokenized) == len(rows) == info["audit"]["measured"]
    for side in ("prompt", "chosen", "rejected"):
        assert info["audit"][side] == percentiles([len(ids) for ids in tokenized[f"{side}_ids"]]), side
    # the shared beginning is context: the prompt the trainer scores from ends with it, the answers start after it
    tok = AutoTokenizer.from_pretrained(tiny_adapter_dir)
    for row, t in zip(rows, tokenized, strict=True):
        assert t["prompt_ids"] == tok(row["prompt"]).input_ids
        assert tok.decode(t["chosen_ids"]) == row["chosen"] and tok.decode(t["rejected_ids"]) == row["rejected"]
        assert tok.decode(t["prompt_ids"]).endswith(row["shared_prefix"])
    assert sum(bool(r["shared_prefix"]) for r in rows) > 0


def test_fast_dpo_trains_trimmed_pairs_as_the_stock_trainer_scores_them(trimmed_pairs, trimmed_dpo, tiny_model_dir,
                                                                         tiny_adapter_dir, tmp_path):
    from distill.fast_dpo import FastDPOTrainer

    stock, _ = trimmed_dpo
    fast = _distill_train(_dpo_argv(trimmed_pairs, tiny_model_dir, tiny_adapter_dir, tmp_path / "fast", "--fast", "true",
                                    "--pack_tokens", "2048", "--ref_cache_dir", str(tmp_path / "cache")))
    assert isinstance(fast, FastDPOTrainer)
    assert json.loads((tmp_path / "fast" / "run.json").read_text())["status"] == "finished"
    assert (tmp_path / "fast" / "adapter_model.safetensors").is_file()
    store = fast._stores["train"]
    tokenized = stock.train_dataset
    for pair in store.pairs:  # the same ids as the stock trainer: the shared prefix in the prompt, once
        t = tokenized[pair.index]
        assert (list(pair.prompt_ids), list(pair.chosen_ids), list(pair.rejected_ids)) == (t["prompt_ids"], t["chosen_ids"], t["rejected_ids"])
    # the reference log-probs of the trimmed answers, packed, equal stock DPO's padded precompute
    torch.testing.assert_close(store.ref_chosen, torch.tensor(tokenized["ref_chosen_logps"]), rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(store.ref_rejected, torch.tensor(tokenized["ref_rejected_logps"]), rtol=1e-5, atol=1e-3)


def test_the_preflight_refuses_trimmed_rows_for_sft_or_another_template(trimmed_pairs, tiny_model_dir,
                                                                        tiny_adapter_dir, tmp_path, capsys):
    from transformers import AutoTokenizer

    from data_gen.prompting import resolve_chat_template
    from distill import cli
    from distill.preflight import assistant_opening

    assert assistant_opening(AutoTokenizer.from_pretrained(tiny_adapter_dir)) == "<|im_start|>assistant\n"
    sft = [str(RECIPES / "tiny_cpu.yaml"), "--model_name_or_path", str(tiny_model_dir), "--dataset_path",
           str(trimmed_pairs), "--output_dir", str(tmp_path / "sft"), "--max_steps", "1", "--report_to", "none"]
    assert cli.main(["train", *sft]) == 2
    assert "text-form rows" in capsys.readouterr().err and not (tmp_path / "sft" / "run.json").exists()
    # a template whose assistant turn opens otherwise (it passes the tool-call check): the rows were not
    # rendered for this student, with either trainer
    other = tmp_path / "other.jinja"
    other.write_text(resolve_chat_template("hermes_tool")[0].replace("<|im_start|>assistant", "<|im_start|>model"))
    for fast in ("false", "true"):
        out = tmp_path / f"other-{fast}"
        argv = _dpo_argv(trimmed_pairs, tiny_model_dir, tiny_adapter_dir, out, "--chat_template", str(other),
                         "--fast", fast)
        assert cli.main(["train", *argv]) == 2
        err = capsys.readouterr().err
        assert "row 0" in err and "'<|im_start|>model\\n'" in err and "another student's chat template" in err
        assert not (out / "run.json").exists()


# --- the command line and bad input ------------------------------------------------------------------------


def test_cli_on_policy_from_sampled_tiny_student_traces(tasks, tiny_adapter_dir, tmp_path):
    """The documented path on a real (tiny) student: distill eval samples it, distill pairs mines and filters."""
    from datasets import load_from_disk

    from distill.cli import main

    small = dict(list(tasks.items())[:2] + list(tasks.items())[-2:])
    tasks_path, _ = _write(tmp_path, small, [])
    assert main(["eval", "--adapter", str(tiny_adapter_dir), "--tasks", tasks_path, "--samples", "3",
                 "--temperature", "0.8", "--seed", "0", "--max-new-tokens", "24", "--no-plots", "--no-progress",
                 "--out", str(tmp_path / "samples")]) in (0, 1)
    traces = [json.loads(line) for line in (tmp_path / "samples" / "traces.jsonl").read_text().splitlines()]
    assert len(traces) == 3 * len(small)
    assert main(["pairs", "--tasks", tasks_path, "--on-policy", "--student-traces", str(tmp_path / "samples" / "traces.jsonl"),
                 "--chosen-from", "gold", "--test-size", "0", "--policy-adapter", str(tiny_adapter_dir),
                 "--max-rejected-nll", "100000", "--trim-shared-prefix", "--out", str(tmp_path / "pairs")]) == 0
    data = load_from_disk(str(tmp_path / "pairs" / "dataset"))["train"]
    assert set(data.column_names) >= {"pair_kind", "rejected_nll", "shared_prefix"}
    sampled = {(t["task_id"], t["raw"]) for t in traces}
    for r in data:
        task = small[r["task_id"]]
        assert r["rejected_source"] == "student" and r["pair_kind"] == pair_kind(task, r["rejected_error"])
        assert isinstance(r["prompt"], str) and r["rejected_nll"] > 0
    assert all(tid in small for tid, _ in sampled)
    card = (tmp_path / "pairs" / "README.md").read_text()
    assert "standard (text) format" in card and "shared_prefix" in card and "pair kind" in card


@pytest.mark.parametrize("flags, message", [
    (["--kinds", "wrong_call,bogus"], "--kinds: bogus"),
    (["--max-rejected-nll", "-3", "--policy-adapter", "x"], "positive number of nats"),
    (["--max-rejected-nll", "nan", "--policy-adapter", "x"], "positive number of nats"),
    (["--max-rejected-nll", "60"], "need the policy"),
    (["--trim-shared-prefix"], "need the policy"),
    (["--trim-shared-prefix", "--trim-min-share", "0", "--policy-adapter", "x"], "--trim-min-share"),
    (["--on-policy"], "pass --student-traces"),
    (["--on-policy", "--student-traces", "s.jsonl", "--synthetic", "2"], "drop --synthetic and --mix"),
    (["--chosen-from", "teacher-or-student-or-teacher"], "chosen_from"),
])
def test_bad_settings_are_errors_before_anything_is_read(flags, message, tmp_path, capsys):
    from distill.cli import main

    # neither the tasks file nor any trace file exists: the settings are checked first
    code = main(["pairs", "--tasks", str(tmp_path / "missing.jsonl"), "--chosen-from", "gold", "--out",
                 str(tmp_path / "out"), *flags])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_policy_without_a_chat_template_is_a_clear_error(rows, tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    tok.chat_template = None
    with pytest.raises(DistillError, match=r"row 0 .*chat template fails on it"):
        to_text_rows(tok, rows, 0.5)
    with pytest.raises(DistillError, match="chat template fails on it"):
        answer_ids(tok, rows[0]["prompt"], rows[0]["tools"], rows[0]["rejected"], "row 0")
