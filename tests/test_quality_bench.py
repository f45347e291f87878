"""benchmarks/quality.py (a real-model run of an hour on a CPU is not for CI): its plan trains the four
conditions on the same pairs and budget with recipes that parse as `distill train` runs them, on the CPU or a
GPU, and its table is read from the conditions' eval reports."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from distill.recipe import parse_recipe
from tests.report_builders import build_report, write_tasks

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def quality(monkeypatch):
    monkeypatch.chdir(ROOT)  # the demo recipes name paths relative to the repository root
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_plan_trains_every_condition_on_the_same_pairs_and_budget(quality, tmp_path, device):
    args = quality.parse_args(["--out", str(tmp_path / "q"), "--steps", "9", "--train-batch-size", "6",
                               "--student-samples", "3", "--device", device])
    stages = quality.plan(args)
    by_name = {s.name: s for s in stages}
    assert [s.name for s in stages if s.name.startswith("eval")] == [
        "eval base", "eval sft", "eval dpo", "eval sft-half", "eval sft+dpo", "eval sft+dpo+nll", "eval sft+dpo-onpolicy"]
    student = by_name["student"].argv
    assert student[student.index("--samples") + 1] == "3" and student[student.index("--device") + 1] == device

    trains = {s.name.removeprefix("train "): s.argv for s in stages if s.name.startswith("train")}
    assert set(trains) == {"sft", "dpo", "sft-half", "sft+dpo", "sft+dpo+nll", "sft+dpo-onpolicy"}
    steps = {name: int(a[a.index("--max_steps") + 1]) for name, a in trains.items()}
    assert steps["sft"] == steps["dpo"] == 9 and steps["sft-half"] + steps["sft+dpo"] == 9
    assert steps["sft+dpo+nll"] == steps["sft+dpo"] == steps["sft+dpo-onpolicy"]
    main_pairs = trains["sft"][trains["sft"].index("--dataset_path") + 1]
    for name, a in trains.items():
        recipe = parse_recipe(a[1:])  # argv[0] is the subcommand
        assert (recipe.script.dataset_path == main_pairs) is (name != "sft+dpo-onpolicy")
        assert recipe.training.per_device_train_batch_size == 6
        assert recipe.training.use_cpu is (device == "cpu")
        assert recipe.model.load_in_4bit is False
        if recipe.script.stage == "dpo":
            assert recipe.training.precompute_ref_log_probs is False
    # DPO alone starts from the base model, DPO after SFT from the half-budget SFT adapter
    assert parse_recipe(trains["dpo"][1:]).script.init_adapter is None
    assert parse_recipe(trains["sft+dpo"][1:]).script.init_adapter.endswith("sft-half")
    # the +nll condition differs from sft+dpo only in the loss: DPO plus an SFT term on the chosen answer
    plain, nll = parse_recipe(trains["sft+dpo"][1:]).training, parse_recipe(trains["sft+dpo+nll"][1:]).training
    assert list(plain.loss_type) == ["sigmoid"] and list(nll.loss_type) == ["sigmoid", "sft"]
    assert list(nll.loss_weights) == [1.0, 1.0]
    assert parse_recipe(trains["sft+dpo+nll"][1:]).script.init_adapter.endswith("sft-half")
    # on-policy: the SFT'd student (sft-half) answers the training tasks like the base student did, and its
    # mistakes replace the base student's as rejected answers; the DPO run is sft+dpo's otherwise
    sample = [s for s in stages if s.name == "student sft-half"][0].argv
    base_sample = by_name["student"].argv
    assert sample[sample.index("--adapter") + 1].endswith("checkpoints/sft-half")
    strip = lambda a, *flags: [x for i, x in enumerate(a) if x not in flags and (i == 0 or a[i - 1] not in flags)]  # noqa: E731
    assert strip(sample, "--adapter", "--out") == strip(base_sample, "--model", "--chat-template", "--out")
    pairs = [s.argv for s in stages if s.name == "pairs"]
    assert len(pairs) == 2 and pairs[1][pairs[1].index("--student-traces") + 1].startswith(
        sample[sample.index("--out") + 1])
    assert pairs[1][pairs[1].index("--out") + 1] == parse_recipe(trains["sft+dpo-onpolicy"][1:]).script.dataset_path
    onpolicy = parse_recipe(trains["sft+dpo-onpolicy"][1:])
    assert onpolicy.script.init_adapter.endswith("sft-half") and list(onpolicy.training.loss_type) == ["sigmoid"]
    assert [parse_recipe(trains[n][1:]).script.stage for n in ("sft", "dpo", "sft-half", "sft+dpo")] == [
        "sft", "dpo", "sft", "dpo"]


def test_results_and_table_come_from_the_eval_reports(quality, tmp_path):
    args = quality.parse_args(["--out", str(tmp_path / "q"), "--device", "cpu", "--eval-per-category", "4"])
    out = Path(args.out)
    tasks = write_tasks(tmp_path / "tasks.jsonl", {"simple_python": 4, "irrelevance": 4})
    outcomes = {
        "base": {"simple_python": ["no_call"] * 4, "irrelevance": ["ok"] * 4},
        "sft-half": {"simple_python": ["ok", "no_call", "no_call", "no_call"], "irrelevance": ["ok"] * 4},
        "sft": {"simple_python": ["ok", "ok", "wrong_value", "schema"], "irrelevance": ["ok", "unexpected_call", "ok", "ok"]},
        "dpo": {"simple_python": ["ok", "no_call", "no_call", "no_call"], "irrelevance": ["ok"] * 4},
        "sft+dpo": {"simple_python": ["ok", "ok", "ok", "malformed"], "irrelevance": ["ok"] * 4},
        "sft+dpo+nll": {"simple_python": ["ok"] * 4, "irrelevance": ["ok"] * 4},
        "sft+dpo-onpolicy": {"simple_python": ["ok", "ok", "no_call", "no_call"], "irrelevance": ["ok"] * 4},
    }
    for cond, outs in outcomes.items():
        folder = out / "eval_base" if cond == "base" else out / "checkpoints" / cond / "eval"
        build_report(folder, tasks, "pkg:smollm2-135m-instruct", outs)
    for folder, rejected in (("pairs", {"student": 25, "synthetic": 15}), ("pairs-sft-half", {"student": 9, "synthetic": 30})):
        (out / folder).mkdir(parents=True)
        (out / folder / "pairs_stats.json").write_text(json.dumps({"summary": {
            "pairs": sum(rejected.values()), "rejected_source": rejected,
            "rejected_error": {"no_call": rejected["student"], "wrong_value": rejected["synthetic"]}}}))

    # the trainer's log: DPO's chosen log-probability falling is the evidence the table shows
    log = lambda step, **kw: {"step": step, "loss": 0.5, **kw}  # noqa: E731
    (out / "checkpoints" / "sft").mkdir(exist_ok=True)
    (out / "checkpoints" / "sft" / "trainer_state.json").write_text(json.dumps({"log_history": [log(5), log(10)]}))
    (out / "checkpoints" / "sft+dpo" / "trainer_state.json").write_text(json.dumps({"log_history": [
        log(5, **{"logps/chosen": -2.9, "logps/rejected": -193.0, "rewards/margins": 3.0}),
        {"train_runtime": 55.0},
        log(75, **{"logps/chosen": -16.9, "logps/rejected": -347.8, "rewards/margins": 20.0})]}))

    res = quality.results(args, {"total": 120.0})
    acc = {c: r["by_category"]["simple_python"]["accuracy"] for c, r in res["conditions"].items()}
    assert acc == {"base": 0.0, "sft-half": 0.25, "sft": 0.5, "dpo": 0.25, "sft+dpo": 0.75, "sft+dpo+nll": 1.0,
                   "sft+dpo-onpolicy": 0.5}
    assert res["training"]["sft"]["last"] == {"step": 10, "loss": 0.5} and res["training"]["dpo"] is None
    assert res["conditions"]["sft"]["errors"]["unexpected_call"] == 1
    assert res["conditions"]["sft+dpo"]["accuracy"] == 7 / 8
    table = quality.markdown(res)
    assert "| category | n | base | sft-half | sft | dpo | sft+dpo | sft+dpo+nll | sft+dpo-onpolicy |" in table
    assert "| simple_python | 4 | 0% | 25% | 50% | 25% | 75% | 100% | 50% |" in table
    assert "| **all** | 8 | 50% | 62% | 62% | 62% | 88% | 100% | 75% |" in table
    assert "rejected: student 25, synthetic 15" in table and "| malformed | 0 | 0 | 0 | 0 | 1 | 0 | 0 |" in table
    assert "sft+dpo-onpolicy: 39 pairs, same chosen answers; rejected: student 9, synthetic 30" in table
    assert "| sft+dpo | 5-75 | -2.9 -> -16.9 | -193.0 -> -347.8 | 20.0 |" in table
    assert "| sft |" not in table.split("DPO training")[1]  # SFT runs log no log-probabilities
