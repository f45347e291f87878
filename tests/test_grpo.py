"""GRPO with the verifier as the reward (distill/grpo.py): the reward's values on hand-built answers, the reward
configuration, the prompt rows (the same text `distill eval` feeds the model), and the bad inputs that must fail
before any weights load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from distill.grpo import (
    PRESETS,
    VerifierReward,
    build_dataset,
    check_tasks_path,
    load_train_tasks,
    resolve_reward,
    score_answer,
    total_reward,
    trainer_prompt_text,
)
from eval.io import DistillError
from eval.tasks import task_from_dict

DEBUG = Path(__file__).resolve().parents[1] / "recipes" / "debug"


@pytest.fixture
def tiny(tmp_path):
    """Copies of the debug recipes' tiny model, pairs and tasks (tests never write into the repository)."""
    shutil.copytree(DEBUG / "tiny", tmp_path / "tiny")
    return tmp_path / "tiny"


WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
            },
            "required": ["city"],
        },
    },
}
AREA = {
    "type": "function",
    "function": {
        "name": "calculate_area",
        "description": "Area of a triangle",
        "parameters": {
            "type": "object",
            "properties": {"base": {"type": "integer"}, "height": {"type": "number"}},
            "required": ["base", "height"],
        },
    },
}
CALL_TASK = task_from_dict(
    {
        "id": "weather",
        "messages": [{"role": "user", "content": "Weather in Paris in celsius?"}],
        "tools": [WEATHER, AREA],
        "expected": [{"name": "get_weather", "arguments": {"city": ["Paris"], "unit": ["celsius", ""]}}],
    }
)
PARALLEL_TASK = task_from_dict(
    {
        "id": "two",
        "messages": [{"role": "user", "content": "Weather in Paris and Lima?"}],
        "tools": [WEATHER],
        "expected": [
            {"name": "get_weather", "arguments": {"city": ["Paris"], "unit": [""]}},
            {"name": "get_weather", "arguments": {"city": ["Lima"], "unit": [""]}},
        ],
    }
)
IRRELEVANCE_TASK = task_from_dict(
    {
        "id": "joke",
        "messages": [{"role": "user", "content": "Tell me a joke."}],
        "tools": [WEATHER],
        "expected": [],
    }
)


def hermes(*calls) -> str:
    return "\n".join(
        f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in calls
    )


FINE, BINARY = resolve_reward("fine"), resolve_reward("binary")


@pytest.mark.parametrize(
    "task, answer, error, components, fine",
    [
        # correct by BFCL's rules (the unit is optional; "paris" matches after BFCL's string normalisation)
        (
            CALL_TASK,
            hermes(("get_weather", {"city": "paris", "unit": "celsius"})),
            "ok",
            dict(correct=1, format=1, schema=1, function=1, arguments=1),
            1.0,
        ),
        (
            CALL_TASK,
            hermes(("get_weather", {"city": "Paris"})),
            "ok",
            dict(correct=1, format=1, schema=1, function=1, arguments=1),
            1.0,
        ),
        # wrong value: one of the two expected arguments is not acceptable
        (
            CALL_TASK,
            hermes(("get_weather", {"city": "London", "unit": "celsius"})),
            "wrong_value",
            dict(correct=0, format=1, schema=1, function=1, arguments=0.5),
            0.4,
        ),
        # schema violation: "kelvin" is not in the enum (and not an acceptable value either)
        (
            CALL_TASK,
            hermes(("get_weather", {"city": "Paris", "unit": "kelvin"})),
            "schema_violation",
            dict(correct=0, format=1, schema=0, function=1, arguments=0.5),
            0.3,
        ),
        # an argument outside the schema: schema fails, and the extra key counts against the arguments
        (
            CALL_TASK,
            hermes(("get_weather", {"city": "Paris", "when": "now"})),
            "schema_violation",
            dict(correct=0, format=1, schema=0, function=1, arguments=2 / 3),
            0.2 + 0.4 / 3,
        ),
        # the wrong function, well-formed and schema-valid
        (
            CALL_TASK,
            hermes(("calculate_area", {"base": 2, "height": 3})),
            "wrong_function",
            dict(correct=0, format=1, schema=1, function=0, arguments=0),
            0.2,
        ),
        # malformed: an attempt at a call that does not parse
        (
            CALL_TASK,
            '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',
            "malformed",
            dict.fromkeys(PRESETS["fine"], 0),
            0.0,
        ),
        # prose where a call is needed
        (CALL_TASK, "It is sunny in Paris.", "no_call", dict.fromkeys(PRESETS["fine"], 0), 0.0),
        # a (perfectly valid) call on an irrelevance task
        (
            IRRELEVANCE_TASK,
            hermes(("get_weather", {"city": "Paris"})),
            "unexpected_call",
            dict.fromkeys(PRESETS["fine"], 0),
            0.0,
        ),
        # the correct abstention
        (
            IRRELEVANCE_TASK,
            "I can only tell you the weather, not jokes.",
            "ok",
            dict.fromkeys(PRESETS["fine"], 1),
            1.0,
        ),
        # one of two parallel calls: half the functions (Jaccard 1/2) and half the arguments
        (
            PARALLEL_TASK,
            hermes(("get_weather", {"city": "Lima"})),
            "wrong_count",
            dict(correct=0, format=1, schema=1, function=0.5, arguments=0.5),
            0.1 + 0.1 + 0.05 + 0.1,
        ),
        (
            PARALLEL_TASK,
            hermes(("get_weather", {"city": "Lima"}), ("get_weather", {"city": "Paris"})),
            "ok",
            dict(correct=1, format=1, schema=1, function=1, arguments=1),
            1.0,
        ),
    ],
)
def test_reward_values_on_hand_built_answers(task, answer, error, components, fine):
    scores, got_error = score_answer(task, answer)
    assert got_error == error
    assert scores == pytest.approx(components)
    assert total_reward(scores, FINE) == pytest.approx(fine)
    assert total_reward(scores, BINARY) == (1.0 if error == "ok" else 0.0)


def test_reward_never_raises_on_hostile_text():
    for text in [
        "",
        "[" * 5000,
        '{"name": 1}',
        "<tool_call>" + "9" * 5000 + "</tool_call>",
        '[get_weather(city="\ud800")]',
        "\x00\x01",
        '<tool_call>{"name": "get_weather", "arguments": 7}',
    ]:
        scores, error = score_answer(CALL_TASK, text)
        assert set(scores) == set(PRESETS["fine"]) and all(0.0 <= v <= 1.0 for v in scores.values())
        assert error != "ok"


def test_resolve_reward_presets_lists_and_errors():
    assert resolve_reward("binary").components == ("correct",)
    fine = resolve_reward(["fine"])
    assert fine.preset == "fine" and sum(fine.weights) == pytest.approx(1.0)
    assert resolve_reward("fine", [1, 1, 1, 1, 1]).weights == (1.0,) * 5
    spec = resolve_reward("correct, format")
    assert spec.components == ("correct", "format") and spec.weights == (1.0, 1.0) and spec.preset is None
    assert resolve_reward(["correct", "schema"], [1.0, 0.5]).to_dict() == {
        "preset": None,
        "components": {"correct": 1.0, "schema": 0.5},
    }
    with pytest.raises(DistillError, match="unknown component.*'corect'"):
        resolve_reward(["corect", "format"])
    with pytest.raises(DistillError, match="unknown component.*'fine'"):
        resolve_reward(["fine", "format"])  # a preset stands alone
    with pytest.raises(DistillError, match="reward_weights: 2 weight"):
        resolve_reward("fine", [1.0, 2.0])
    with pytest.raises(DistillError, match="named twice"):
        resolve_reward(["correct", "correct"])


def test_reward_functions_decode_ids_like_eval_and_score_each_batch_once(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny / "model")
    reward = VerifierReward(
        {t.id: t for t in (CALL_TASK, IRRELEVANCE_TASK)}, FINE, tokenizer=tok, stop_ids={tok.eos_token_id}
    )
    funcs = reward.functions()
    assert [f.__name__ for f in funcs] == list(PRESETS["fine"])
    right = hermes(("get_weather", {"city": "Paris"}))
    # generation ends with the end-of-turn token; anything after it (padding, a second turn) is not the answer
    ids = [
        tok(right, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] + tok("junk")["input_ids"],
        tok("no idea", add_special_tokens=False)["input_ids"] + [tok.eos_token_id],
        tok("Sorry, no joke.", add_special_tokens=False)["input_ids"],
    ]
    completions = ["<decoded by the trainer, ignored>"] * 3
    metrics, extra = {}, {}
    columns = dict(
        task_id=["weather", "weather", "joke"], log_metric=metrics.__setitem__, log_extra=extra.__setitem__
    )
    out = {
        f.__name__: f(prompts=["p"] * 3, completions=completions, completion_ids=ids, **columns)
        for f in funcs
    }
    assert out["correct"] == [1.0, 0.0, 1.0] and out["format"] == [1.0, 0.0, 1.0]
    assert reward.answers == 3, "the five component functions share one scoring pass"
    assert extra["verdict"] == ["ok", "no_call", "ok"] and metrics["verifier/answers_per_s"] > 0
    summary = reward.summary()
    assert summary["components"] == PRESETS["fine"] and summary["errors"] == {"ok": 2, "no_call": 1}
    # the next batch (a new list) is scored again
    funcs[0](prompts=["p"], completions=["x"], completion_ids=[ids[0]], task_id=["weather"])
    assert reward.answers == 4
    with pytest.raises(DistillError, match="task 'nope'"):
        funcs[0](prompts=["p"], completions=["x"], completion_ids=[ids[0]], task_id=["nope"])


def test_prompt_rows_are_the_text_distill_eval_feeds_the_model(tiny):
    from transformers import AutoTokenizer

    from data_gen.prompting import render_prompt

    tasks = load_train_tasks(str(tiny / "tasks.jsonl"))
    tok = AutoTokenizer.from_pretrained(tiny / "model")
    rows, audit = build_dataset(tasks, tok)
    assert rows.column_names == ["prompt", "task_id"] and len(rows) == len(tasks) == audit["rows"]
    assert audit["irrelevance_tasks"] == 3 and audit["prompt"]["max"] > 100
    for row in rows:
        task = tasks[row["task_id"]]
        text, completion = render_prompt(tok, task.messages, task.tools)
        assert not completion and row["prompt"] == text
        # every task's own tools are in its prompt, and no other task's
        names = {t["function"]["name"] for t in task.tools}
        for other in ("get_weather", "calculate_area", "convert_currency"):
            assert (f'"name": "{other}"' in row["prompt"]) == (other in names)


def test_trainer_prompt_text_drops_a_bos_the_tokenizer_adds_again(tiny):
    from tokenizers import processors
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny / "model")
    text = "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert trainer_prompt_text(tok, text) == (text, len(tok(text)["input_ids"]))
    # A tokenizer that adds a BOS (as Llama 3's and Gemma's do) to a template that writes one already
    bos = "<|endoftext|>"
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.convert_tokens_to_ids(bos))]
    )
    tok.bos_token = bos
    with_bos = bos + text
    assert tok(with_bos)["input_ids"][:2] == [tok.bos_token_id] * 2, "the double BOS this guards against"
    stripped, n = trainer_prompt_text(tok, with_bos)
    assert (
        stripped == text
        and tok(stripped)["input_ids"] == tok(with_bos, add_special_tokens=False)["input_ids"]
    )
    assert n == len(tok(with_bos, add_special_tokens=False)["input_ids"])


def test_bad_tasks_inputs_are_clear_errors(tiny, tmp_path):
    with pytest.raises(DistillError, match="is a preference dataset; stage grpo trains on a tasks .jsonl"):
        check_tasks_path(str(tiny / "pairs"))
    with pytest.raises(DistillError, match="no such tasks file"):
        load_train_tasks(str(tmp_path / "missing.jsonl"))
    lines = [json.loads(line) for line in open(tiny / "tasks.jsonl")]
    del lines[2]["expected"]
    bad = tmp_path / "no_expected.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in lines))
    with pytest.raises(DistillError, match=r"no_expected.jsonl:3: .*missing key 'expected'.*expected calls"):
        load_train_tasks(str(bad))


# --- through `distill train` ---------------------------------------------------------------------------------------

PARIS_ANSWER = (
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}\n</tool_call>'
)


@pytest.fixture(scope="module")
def policy(tmp_path_factory):
    """A tiny model that answers the Paris weather task right about 9 times in 10 at temperature 1, and a tasks
    file with that task and one irrelevance task. A randomly initialised model never writes a call, so every
    answer in a group would score the same and GRPO would have no gradient; a policy that is sometimes right is
    what GRPO learns from. Built by 100 plain full-parameter steps on that one answer (seconds)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("grpo")
    shutil.copytree(DEBUG / "tiny", root / "tiny")
    tok = AutoTokenizer.from_pretrained(root / "tiny" / "model")
    lines = [json.loads(line) for line in open(root / "tiny" / "tasks.jsonl")]
    keep = [r for r in lines if r["id"] in ("tiny_weather_paris", "tiny_irrelevance_joke")]
    (root / "tasks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in keep))
    rows, _ = build_dataset(load_train_tasks(str(root / "tasks.jsonl")), tok)
    prompt = tok(next(r["prompt"] for r in rows if r["task_id"] == "tiny_weather_paris"))["input_ids"]
    answer = tok(PARIS_ANSWER, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    ids = torch.tensor([prompt + answer])
    labels = ids.clone()
    labels[0, : len(prompt)] = -100
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(root / "tiny" / "model")
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(100):
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    model.save_pretrained(root / "policy")
    tok.save_pretrained(root / "policy")
    return root


def _train(policy, out, *flags) -> int:
    from distill.cli import main

    recipe = policy / "tiny_cpu_grpo.yaml"
    shutil.copy(DEBUG / "tiny_cpu_grpo.yaml", recipe)
    return main(
        [
            "train",
            str(recipe),
            "--model_name_or_path",
            str(policy / "policy"),
            "--dataset_path",
            str(policy / "tasks.jsonl"),
            "--output_dir",
            str(out),
            "--max_steps",
            "1",
            "--report_to",
            "none",
            *flags,
        ]
    )


def _lora(folder):
    from safetensors.torch import load_file

    return load_file(str(folder / "adapter_model.safetensors"))


def test_one_grpo_step_through_distill_train_moves_lora_logs_reward_and_records_it(policy):
    out = policy / "runs" / "base"
    assert _train(policy, out) == 0
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    step = next(h for h in logs if "reward" in h)
    assert step["frac_reward_zero_std"] < 1, "the Paris group must hold right and wrong answers"
    assert 0 < step["reward"] < 1 and 0 < step["rewards/correct/mean"] < 1
    assert step["verifier/answers_per_s"] > 1000
    lora = _lora(out)
    # peft starts every lora_B at zero: any nonzero B is the step's update
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "grpo" and run["status"] == "finished" and run["global_step"] == 1
    assert run["config"]["training"]["reward"] == ["fine"]
    assert run["config"]["training"]["reward_weights"] == [0.5, 0.1, 0.1, 0.1, 0.2]
    assert run["reward"]["preset"] == "fine" and run["reward"]["components"] == PRESETS["fine"]
    assert run["reward"]["answers_scored"] == 16 and sum(run["reward"]["errors"].values()) == 16
    assert run["dataset"]["tasks"]["n"] == 2 and run["dataset"]["tasks"]["fingerprint"].startswith("sha256:")
    assert run["audit"]["irrelevance_tasks"] == 1


def test_grpo_from_an_init_adapter_against_its_frozen_copy(policy):
    start = policy / "runs" / "base"
    if not (start / "adapter_model.safetensors").is_file():
        assert _train(policy, start) == 0
    out = policy / "runs" / "from-adapter"
    assert _train(policy, out, "--init_adapter", str(start), "--beta", "0.04", "--reward", "binary") == 0
    before, after = _lora(start), _lora(out)
    assert before.keys() == after.keys(), "the saved adapter is the trained one only (no 'ref' copy)"
    assert any(not torch_equal(before[k], after[k]) for k in before)
    run = json.loads((out / "run.json").read_text())
    assert run["init_adapter"] == str(start) and run["reward"]["components"] == {"correct": 1.0}
    logs = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert "kl" in next(h for h in logs if "reward" in h)


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def _fail_if_weights_load(monkeypatch):
    from distill import modeling

    def refuse(*args, **kwargs):
        raise AssertionError("weights loaded before the input was checked")

    monkeypatch.setattr(modeling, "load_student", refuse)


@pytest.mark.parametrize(
    "flags, message",
    [
        (
            ["--dataset_path", "{tiny}/pairs"],
            "is a preference dataset; stage grpo trains on a tasks .jsonl file",
        ),
        (["--reward", "correct", "formt"], "unknown component(s) 'formt'"),
        (["--reward_weights", "1", "2"], "reward_weights: 2 weight(s) for 5 reward component(s)"),
        (["--eval_strategy", "steps"], "key 'eval_strategy' must be 'no' for stage grpo"),
        (
            ["--dataset_path", "{tiny}/no_expected.jsonl"],
            "no_expected.jsonl:1: missing key 'expected' (stage grpo needs every task with its expected calls)",
        ),
    ],
)
def test_bad_grpo_input_is_a_clear_error_before_weights_load(tiny, flags, message, monkeypatch, capsys):
    from distill.cli import main

    _fail_if_weights_load(monkeypatch)
    lines = [json.loads(line) for line in open(tiny / "tasks.jsonl")]
    del lines[0]["expected"]
    (tiny / "no_expected.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    recipe = tiny / "grpo.yaml"
    shutil.copy(DEBUG / "tiny_cpu_grpo.yaml", recipe)
    flags = [f.format(tiny=tiny) for f in flags]
    code = main(
        [
            "train",
            str(recipe),
            "--model_name_or_path",
            str(tiny / "model"),
            "--dataset_path",
            str(tiny / "tasks.jsonl"),
            "--output_dir",
            str(tiny / "out"),
            *flags,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert not (tiny / "out" / "run.json").exists()


def test_list_keys_grpo(capsys):
    from distill.train import main

    assert main(["--list-keys", "grpo"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    for key in (
        "--reward ",
        "--reward_weights",
        "--num_generations",
        "--max_completion_length",
        "--use_vllm",
        "--beta",
        "--init_adapter",
    ):
        assert key in out, key
    assert "'binary' (1 when correct by BFCL's rules" in out


def test_reward_signal_benchmark_counts_groups_that_teach(tmp_path):
    """benchmarks/grpo_reward.py on hand-built answers: a group whose answers all score alike carries no signal."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "grpo_reward", DEBUG.parents[1] / "benchmarks" / "grpo_reward.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tasks_file = tmp_path / "tasks.jsonl"
    tasks_file.write_text("".join(json.dumps(t.record) + "\n" for t in (CALL_TASK, IRRELEVANCE_TASK)))
    right, half = hermes(("get_weather", {"city": "Paris"})), hermes(("get_weather", {"city": "Oslo"}))
    answers = {
        # weather, group 1: prose and a half-right call (fine separates them, binary does not); group 2: all prose
        "weather": ["It is sunny."] * 3 + [half] + ["No idea."] * 4,
        # joke, group 1: abstentions and one call (both rewards separate them)
        "joke": ["Ha."] * 3 + [right],
    }
    traces = tmp_path / "traces.jsonl"
    traces.write_text(
        "".join(
            json.dumps({"task_id": tid, "model": "m", "sample": i, "raw": raw}) + "\n"
            for tid, group in answers.items()
            for i, raw in enumerate(group)
        )
    )
    assert (
        bench.main(
            [
                "--tasks",
                str(tasks_file),
                "--traces",
                f"s={traces}",
                "--group-size",
                "4",
                "--repeat",
                "1",
                "--results",
                str(tmp_path / "res"),
            ]
        )
        == 0
    )
    res = json.loads(next((tmp_path / "res").glob("grpo_reward-*-cpu.json")).read_text())
    s = res["students"]["s"]
    assert s["groups"] == 3 and s["answers"] == 12
    assert s["rewards"]["binary"]["groups_with_signal"] == pytest.approx(1 / 3, abs=1e-3)
    assert s["rewards"]["fine"]["groups_with_signal"] == pytest.approx(2 / 3, abs=1e-3)
    assert s["by_category"]["default"] == {"groups": 3, "binary": 0.3333, "fine": 0.6667}
    assert res["speed"]["reward_answers_per_s"] > 0
    assert "| fine | " in next((tmp_path / "res").glob("grpo_reward-*-cpu.md")).read_text()
