"""benchmarks/quality.py, the preference-vs-SFT protocol (a real-model run is not for CI): its plan (dev carved from
the training categories, every arm from one start adapter on the same pairs, recipes that parse as `distill train`
runs them, held-out tasks only in stage B), the selection on dev (a collapsed arm is never picked; held-out is
touched once), the paired bootstrap, and the whole results file built from synthetic eval reports."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest

from distill.recipe import parse_recipe
from distill.testing.report_builders import build_report, write_tasks
from eval.io import DistillError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def quality(monkeypatch):
    monkeypatch.chdir(ROOT)  # the demo recipes name paths relative to the repository root
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "quality", module)  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _args(quality, tmp_path, *extra):
    return quality.parse_args(["--out", str(tmp_path / "q"), "--results", str(tmp_path / "results"),
                               "--device", "cpu", "--train-per-category", "6", "--dev-per-category", "2",
                               "--eval-per-category", "4", "--sft-steps", "3", "--arm-steps", "4", "--checkpoints", "2",
                               "--train-batch-size", "2", "--dpo-lrs", "1e-4,2e-5", "--bootstrap", "300", *extra])


def _flag(argv, name):
    return argv[argv.index(name) + 1]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_plan_screens_every_arm_from_one_start_on_dev_and_touches_held_out_only_in_stage_b(quality, tmp_path, device):
    args = _args(quality, tmp_path, "--device", device, "--onpolicy", "2")
    planner = quality.Planner(args)
    grpo = quality.grpo_available()  # GRPO arms join the screen once distill has a `stage: grpo` recipe
    assert [a.name for a in planner.arms] == ["sft", "sigmoid-lr2e-05", "sigmoid-lr0.0001", "sigmoid+sft", "apo_zero",
                                              "sigmoid-onpolicy", *(["sft+grpo", "grpo"] if grpo else [])]
    prep = planner.prepare()
    assert [j.name for j in prep] == ["import train", "import held-out", "split", "compose", "sample student", "pairs"]
    # dev is carved from the imported training categories: train + dev per category are imported together
    assert _flag(prep[0].argv, "--limit") == "8" and prep[2].fn is not None
    assert _flag(prep[3].argv, "--tasks").endswith("train_pool.jsonl")  # composed from the training part only

    start = parse_recipe(planner.train_start(0).argv[1:])
    assert start.script.stage == "sft" and start.training.max_steps == 3 and start.training.seed == 0
    recipes = {a.name: parse_recipe(planner.train_arm(a, 0).argv[1:]) for a in planner.arms if a.stage != "grpo"}
    if grpo:
        rl = {a.name: parse_recipe(planner.train_arm(a, 0).argv[1:]) for a in planner.arms if a.stage == "grpo"}
        assert rl["sft+grpo"].script.init_adapter == planner.o("seed0", "start") and rl["grpo"].script.init_adapter is None
        assert rl["sft+grpo"].training.max_steps == 4 and rl["grpo"].training.max_steps == 3 + 4  # same total budget
        assert {r.script.stage for r in rl.values()} == {"grpo"}
        assert {r.script.dataset_path for r in rl.values()} == {planner.o("train_tasks.jsonl")}
        assert planner.checkpoint_steps("grpo") == [3, 6, 7]
    pairs = start.script.dataset_path
    for name, r in recipes.items():
        assert r.script.init_adapter == planner.o("seed0", "start"), name
        assert (r.script.dataset_path == pairs) is (name != "sigmoid-onpolicy"), name
        assert r.training.max_steps == 4 and r.training.save_steps == 2 and r.training.save_total_limit == 2
        assert r.training.per_device_train_batch_size == 2 and r.training.use_cpu is (device == "cpu")
        assert r.training.logging_steps == 1  # the guard sees every step
        if name != "sft":
            assert r.script.stage == "dpo" and r.training.precompute_ref_log_probs is False
            assert r.script.logps_guard_stop is True and r.script.logps_guard_nats == 10.0
    assert recipes["sft"].script.stage == "sft" and recipes["sft"].training.learning_rate == 5e-4
    assert {n: list(r.training.loss_type) for n, r in recipes.items() if n != "sft"} == {
        "sigmoid-lr2e-05": ["sigmoid"], "sigmoid-lr0.0001": ["sigmoid"], "sigmoid+sft": ["sigmoid", "sft"],
        "apo_zero": ["apo_zero"], "sigmoid-onpolicy": ["sigmoid"]}
    assert {n: r.training.learning_rate for n, r in recipes.items() if n != "sft"} == {
        "sigmoid-lr2e-05": 2e-5, "sigmoid-lr0.0001": 1e-4, "sigmoid+sft": 1e-4, "apo_zero": 1e-4,
        "sigmoid-onpolicy": 1e-4}
    assert list(recipes["sigmoid+sft"].training.loss_weights) == [1.0, 1.0]
    onpolicy = planner.onpolicy()
    assert _flag(onpolicy[0].argv, "--adapter") == planner.o("seed0", "start") and _flag(onpolicy[0].argv, "--samples") == "2"
    assert _flag(onpolicy[1].argv, "--out") == recipes["sigmoid-onpolicy"].script.dataset_path
    assert "--on-policy" in onpolicy[1].argv and "--synthetic" not in onpolicy[1].argv
    assert _flag(onpolicy[1].argv, "--student-traces") == planner.o("student-start", "traces.jsonl")
    assert planner.checkpoint_steps() == [2, 4]

    # stage A never names the held-out tasks; stage B evaluates only them
    stage_a = [*prep[2:], planner.train_start(0), *onpolicy, *(planner.train_arm(a, 0) for a in planner.arms)]
    assert not any("eval_tasks.jsonl" in " ".join(j.argv or []) for j in stage_a)
    selection = {"baseline": {"arm": "sft", "step": 0, "label": "start"},
                 "candidate": {"arm": "sigmoid+sft", "step": 2, "label": "sigmoid+sft"}}
    starts, trains, evals = planner.stage_b(selection)
    assert [parse_recipe(j.argv[1:]).training.seed for j in starts] == [1, 2]
    # the start adapter as baseline needs no more training; the candidate is retrained to the dev-chosen step
    assert [(parse_recipe(j.argv[1:]).training.seed, parse_recipe(j.argv[1:]).training.max_steps) for j in trains] == [
        (1, 2), (2, 2)]
    assert all(parse_recipe(j.argv[1:]).script.init_adapter == planner.o(f"seed{s}", "start")
               for s, j in zip((1, 2), trains, strict=True))
    assert {_flag(j.argv, "--tasks") for j in evals} == {planner.o("eval_tasks.jsonl")}
    adapters = [_flag(j.argv, "--adapter") for j in evals[1:]]
    assert adapters == [planner.o("seed0", "start"), planner.o("seed1", "start"), planner.o("seed2", "start"),
                        planner.o("seed0", "sigmoid+sft", "checkpoint-2"), planner.o("seed1", "sigmoid+sft-2"),
                        planner.o("seed2", "sigmoid+sft-2")]


def test_arms_can_be_skipped_by_name_but_not_the_sft_control(quality, tmp_path):
    names = [a.name for a in quality.arms(_args(quality, tmp_path, "--skip-arms", "apo_zero,sigmoid-lr2e-05"))]
    assert names[:3] == ["sft", "sigmoid-lr0.0001", "sigmoid+sft"] and "apo_zero" not in names
    with pytest.raises(DistillError, match="no arm named apo-zero"):
        quality.arms(_args(quality, tmp_path, "--skip-arms", "apo-zero"))
    with pytest.raises(DistillError, match="sft control cannot be skipped"):
        quality.arms(_args(quality, tmp_path, "--skip-arms", "sft"))


def test_dev_split_comes_from_training_categories_and_never_overlaps_held_out(quality):
    source = [{"id": f"live_simple_{i}", "category": "live_simple"} for i in range(5)] + [
        {"id": f"live_irrelevance_{i}", "category": "live_irrelevance"} for i in range(5)]
    held = [{"id": f"simple_python_{i}", "category": "simple_python"} for i in range(3)]
    train, dev = quality.split_dev(source, held, 2)
    assert [t["id"] for t in dev] == ["live_simple_0", "live_simple_1", "live_irrelevance_0", "live_irrelevance_1"]
    assert len(train) == 6 and not {t["id"] for t in train} & {t["id"] for t in dev}
    with pytest.raises(DistillError, match="overlaps the held-out tasks: live_simple_0"):
        quality.split_dev(source, [*held, {"id": "live_simple_0", "category": "other"}], 2)
    with pytest.raises(DistillError, match="training categories simple_python are also held out"):
        quality.split_dev([*source, {"id": "simple_python_9", "category": "simple_python"}], held, 2)
    with pytest.raises(DistillError, match="too few tasks"):
        quality.split_dev(source, held, 6)


def test_a_training_category_too_small_for_dev_and_training_is_shared_in_proportion(quality, capsys):
    """BFCL has 16 live_parallel tasks: 40 dev and 200 training tasks per category used to ask for more than all of
    them (and stop the GPU command at its split); now 3 go to dev and 13 to training, and the split says so."""
    pytest.importorskip("bfcl_eval", reason="needs bfcl-eval (pip install --no-deps bfcl-eval)")
    from data_gen.bfcl import import_bfcl

    source = list(import_bfcl(["live_simple", "live_parallel"], limit=240))
    held = list(import_bfcl(["simple_python"], limit=3))
    train, dev = quality.split_dev(source, held, 40, 200)
    per = lambda rows, c: sum(t["category"] == c for t in rows)  # noqa: E731
    assert (per(dev, "live_parallel"), per(train, "live_parallel")) == (3, 13)
    assert (per(dev, "live_simple"), per(train, "live_simple")) == (40, 200)
    assert "live_parallel has 16 tasks" in capsys.readouterr().err
    with pytest.raises(DistillError, match="too few tasks for a dev split of 40 per category in live_parallel"):
        quality.split_dev(source, held, 40)  # without a training size there is no proportion to keep
    assert quality.dev_count(16, 3, 8) == 3 and quality.dev_count(5, 3, 8) == 1  # the CPU command's sizes


def _summary(acc, parse=1.0):
    return {"accuracy": acc, "format_valid_rate": parse, "by_category": {}}


def test_selection_on_dev_skips_collapsed_arms_and_is_frozen_before_held_out(quality, tmp_path):
    dev = {"sft": {0: _summary(0.5), 2: _summary(0.6), 4: _summary(0.6, 0.9)},
           "sigmoid-lr1e-04": {2: _summary(0.9)},  # best on dev, but its chosen log-probability collapsed
           "sigmoid+sft": {2: _summary(0.7), 4: _summary(0.7)},
           "apo_zero": {2: _summary(0.7, 0.8)}}
    kinds = {"sft": "sft", "sigmoid-lr1e-04": "preference", "sigmoid+sft": "preference", "apo_zero": "preference"}
    sel = quality.select(dev, kinds, {"sigmoid-lr1e-04"})
    assert {r: (p["arm"], p["step"], p["label"]) for r, p in sel.items()} == {
        "baseline": ("sft", 2, "sft"), "candidate": ("sigmoid+sft", 2, "sigmoid+sft")}  # ties: parse rate, fewer steps
    dev["sft"][0] = _summary(0.8)
    assert quality.select(dev, kinds, set())["baseline"]["label"] == "start"
    with pytest.raises(DistillError, match="no preference arm left"):
        quality.select(dev, kinds, {"sigmoid-lr1e-04", "sigmoid+sft", "apo_zero"})

    path = tmp_path / "selection.json"
    first = quality.freeze_selection(path, sel)
    assert quality.freeze_selection(path, sel) == first  # a rerun with the same picks resumes
    other = {**sel, "candidate": {"arm": "apo_zero", "step": 2, "label": "apo_zero", "dev": {}}}
    with pytest.raises(DistillError, match="Held-out tasks are evaluated once"):
        quality.freeze_selection(path, other)


def test_paired_bootstrap_over_tasks_and_seeds(quality):
    tasks = [f"t{i}" for i in range(40)]
    base = {s: {t: i % 2 == 0 for i, t in enumerate(tasks)} for s in range(3)}
    better = {s: {t: i % 2 == 0 or i % 4 == 1 for i, t in enumerate(tasks)} for s in range(3)}  # +25 points, always
    d = quality.paired_bootstrap(better, base, reps=500)
    assert d["mean"] == pytest.approx(0.25) and 0 < d["ci95"][0] <= 0.25 <= d["ci95"][1]
    same = quality.paired_bootstrap(base, base, reps=200)
    assert same == {"mean": 0.0, "ci95": [0.0, 0.0]}
    # a gain on one seed only: the interval over seeds reaches 0
    one_seed = {**base, 0: better[0]}
    d1 = quality.paired_bootstrap(one_seed, base, reps=2000)
    assert d1["mean"] == pytest.approx(0.25 / 3) and d1["ci95"][0] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="different tasks"):
        quality.paired_bootstrap({0: {"t0": True}}, {0: {"t1": True}}, reps=10)


def test_stage_b_section_has_exactly_the_results_format(quality):
    cats = {"a1": "simple_python", "a2": "simple_python", "b1": "irrelevance", "b2": "irrelevance"}
    verdicts = {"sft": {0: {"a1": True, "a2": False, "b1": False, "b2": False},
                        1: {"a1": True, "a2": True, "b1": False, "b2": False}},
                "sigmoid+sft": {0: {"a1": True, "a2": True, "b1": True, "b2": False},
                                1: {"a1": True, "a2": True, "b1": True, "b2": True}}}
    b = quality.stage_b_section("sft", "sigmoid+sft", verdicts, cats, reps=200)
    assert set(b) == {"baseline", "candidate", "arms", "difference"}
    assert b["baseline"] == "sft" and b["candidate"] == "sigmoid+sft"
    assert set(b["arms"]) == {"sft", "sigmoid+sft"} and set(b["arms"]["sft"]) == {"seeds", "mean"}
    assert b["arms"]["sft"]["seeds"]["0"] == {"accuracy": 0.25, "by_category": {"irrelevance": 0.0, "simple_python": 0.5}}
    assert b["arms"]["sigmoid+sft"]["mean"] == {"accuracy": 0.875,
                                                "by_category": {"irrelevance": 0.75, "simple_python": 1.0}}
    assert b["difference"]["mean"] == pytest.approx(0.875 - 0.375) and len(b["difference"]["ci95"]) == 2


def _fake_runner(quality, monkeypatch, dev_acc: dict, heldout: dict, collapse: set):
    """run_jobs stand-in: makes each job's output as the real command would, from scripted outcomes."""
    real = quality.run_jobs

    def outcomes(n_ok, n, cat):
        bad = "unexpected_call" if cat.endswith("irrelevance") else "wrong_value"
        return ["ok"] * n_ok + [bad] * (n - n_ok)

    def fake(jobs, *, out, parallel=1, lock=None, tag="quality"):
        timings = {}
        for job in jobs:
            if job.done.exists():
                continue
            if job.fn is not None:  # the dev split runs for real
                real([job], out=out)
                continue
            argv, cmd = job.argv, job.argv[0]
            done = job.done
            done.parent.mkdir(parents=True, exist_ok=True)
            if cmd == "import":
                counts = {"live_simple": 8, "live_irrelevance": 8} if "live" in _flag(argv, "--categories") else {
                    "simple_python": 4, "irrelevance": 4}
                write_tasks(done, counts)
            elif cmd == "compose":
                shutil.copy(_flag(argv, "--tasks"), done)
            elif cmd == "pairs":
                done.parent.mkdir(parents=True, exist_ok=True)
                done.write_text(json.dumps({"summary": {"pairs": 24, "rejected_source": {"synthetic": 24},
                                                        "rejected_error": {"wrong_value": 24}}}))
            elif cmd == "train":
                folder = Path(_flag(argv, "--output_dir"))
                steps = int(_flag(argv, "--max_steps"))
                name = folder.name
                log = [{"step": i, "loss": 0.5, "logps/chosen": -3.0 - (20 * i if name in collapse else 0.5 * i),
                        "logps/rejected": -50.0 - i, "rewards/margins": float(i)} for i in range(1, steps + 1)]
                stop = 1 if name in collapse else steps  # the guard stops a collapsing arm at its first check
                every = int(_flag(argv, "--save_steps"))
                for k in range(every, stop + 1, every):
                    (folder / f"checkpoint-{k}").mkdir(parents=True, exist_ok=True)
                    (folder / f"checkpoint-{k}" / "adapter_model.safetensors").write_bytes(b"x")
                (folder / "trainer_state.json").write_text(json.dumps({"log_history": log[:stop]}))
                guard = {"tripped": {"step": 1, "stopped": True}} if name in collapse else {"tripped": None}
                (folder / "run.json").write_text(json.dumps({"status": "finished", "global_step": stop,
                                                             "logps_guard": guard}))
                done.write_bytes(b"x")
            elif cmd == "eval":
                folder = Path(_flag(argv, "--out"))
                tasks = Path(_flag(argv, "--tasks"))
                if "dev" in folder.parts:
                    acc = dev_acc[folder.name]
                    build_report(folder, tasks, "m", {"live_simple": outcomes(acc[0], 2, "live_simple"),
                                                      "live_irrelevance": outcomes(acc[1], 2, "live_irrelevance")})
                else:
                    key = "base" if folder.name == "base" else (folder.name, folder.parent.name)
                    acc = heldout[key]
                    build_report(folder, tasks, "m", {"simple_python": outcomes(acc[0], 4, "simple_python"),
                                                      "irrelevance": outcomes(acc[1], 4, "irrelevance")})
            timings[job.name] = 1.0
        return timings

    monkeypatch.setattr(quality, "run_jobs", fake)


def test_main_writes_stage_a_selection_and_stage_b_from_eval_reports(quality, tmp_path, monkeypatch):
    # dev (correct of 2 live_simple, of 2 live_irrelevance): sigmoid-lr1e-04 would win but collapses; the best
    # preference arm that holds is sigmoid+sft at step 2, the best SFT is the continued sft at step 4
    dev = {"start": (1, 0), "sft-2": (1, 1), "sft-4": (2, 1), "sigmoid-lr2e-05-2": (1, 0), "sigmoid-lr2e-05-4": (1, 1),
           "sigmoid-lr0.0001-1": (2, 2), "sigmoid+sft-2": (2, 2), "sigmoid+sft-4": (2, 1), "apo_zero-2": (1, 1),
           "apo_zero-4": (1, 1)}
    heldout = {"base": (0, 4), **{("sft", f"seed{s}"): (2, 1) for s in range(3)},
               **{("sigmoid+sft", f"seed{s}"): (3, 3) for s in range(3)}}
    _fake_runner(quality, monkeypatch, dev, heldout, collapse={"sigmoid-lr0.0001"})
    args = _args(quality, tmp_path)
    assert quality.main([*sum(([k, v] for k, v in [("--out", args.out), ("--results", args.results)]), []),
                         "--device", "cpu", "--train-per-category", "6", "--dev-per-category", "2",
                         "--eval-per-category", "4", "--sft-steps", "3", "--arm-steps", "4", "--checkpoints", "2",
                         "--dpo-lrs", "1e-4,2e-5", "--bootstrap", "300", "--student-samples", "0",
                         *(["--skip-arms", "sft+grpo,grpo"] if quality.grpo_available() else []), "--scale-note", "CPU scale: no GPU lent."]) == 0
    [json_path] = Path(args.results).glob("quality-*-cpu.json")
    res = json.loads(json_path.read_text())
    assert res["sizes"]["eval_per_category"] == 4
    a = res["stage_a"]
    assert a["arms"]["sigmoid-lr0.0001"]["collapsed"] is True and list(a["arms"]["sigmoid-lr0.0001"]["dev"]) == ["1"]
    assert not any(arm["collapsed"] for n, arm in a["arms"].items() if n != "sigmoid-lr0.0001")
    assert a["arms"]["sigmoid+sft"]["training"]["first"]["logps/chosen"] == -3.5
    assert {r: (p["label"], p["step"]) for r, p in res["selection"].items()} == {
        "baseline": ("sft", 4), "candidate": ("sigmoid+sft", 2)}
    b = res["stage_b"]
    assert set(b) == {"baseline", "candidate", "arms", "difference"}
    assert b["arms"]["sft"]["mean"] == {"accuracy": 3 / 8, "by_category": {"irrelevance": 0.25, "simple_python": 0.5}}
    assert sorted(b["arms"]["sigmoid+sft"]["seeds"]) == ["0", "1", "2"]
    assert b["difference"]["mean"] == pytest.approx(3 / 8) and b["difference"]["ci95"][0] > 0
    t = res["target"]
    # irrelevance 75% >= 60%, simple_python 75% >= 50%, +37.5 points; base calls nothing in simple_python
    assert t["met"] is True and t["parts"]["no_category_below_base"]["got"] == {}
    frozen = json.loads((Path(args.out) / "selection.json").read_text())
    assert frozen["picks"]["candidate"] == {"arm": "sigmoid+sft", "step": 2, "label": "sigmoid+sft"}
    md = Path(str(json_path).replace(".json", ".md")).read_text()
    assert "CPU scale: no GPU lent." in md and "collapsed: stopped by the guard" in md
    assert "Held-out tasks were evaluated once" in md and "Target MET." in md
    assert "| **sigmoid+sft mean** | - | **75%** | 75% | 75% |" in md
    assert "python benchmarks/quality.py --device cuda --jobs 9" in md

    # --report-only runs nothing and reports what is there: without every held-out result, no stage B at all
    shutil.rmtree(Path(args.out) / "heldout" / "seed2" / "sft")
    monkeypatch.setattr(quality, "run_jobs", lambda *a, **k: pytest.fail("--report-only ran a job"))
    assert quality.main(["--out", args.out, "--results", args.results, "--device", "cpu", "--train-per-category", "6",
                         "--dev-per-category", "2", "--eval-per-category", "4", "--sft-steps", "3", "--arm-steps", "4",
                         "--checkpoints", "2", "--dpo-lrs", "1e-4,2e-5", "--student-samples", "0", "--report-only",
                         *(["--skip-arms", "sft+grpo,grpo"] if quality.grpo_available() else []),
                         "--note", "a partial run"]) == 0
    partial = json.loads(json_path.read_text())
    assert partial["stage_b"] is None and partial["target"] is None
    assert partial["selection"] == res["selection"] and partial["seconds"]["total"] == res["seconds"]["total"]
    md = Path(str(json_path).replace(".json", ".md")).read_text()
    assert "Stage B (held out) has not run to the end" in md and "Note: a partial run" in md

    # a run cut short in stage A: its training logs are reported, nothing is picked, held-out is never touched
    shutil.rmtree(Path(args.out) / "dev" / "apo_zero-4")
    shutil.rmtree(Path(args.out) / "heldout")
    (Path(args.out) / "selection.json").unlink()
    assert quality.main(["--out", args.out, "--results", args.results, "--device", "cpu", "--train-per-category", "6",
                         "--dev-per-category", "2", "--eval-per-category", "4", "--sft-steps", "3", "--arm-steps", "4",
                         "--checkpoints", "2", "--dpo-lrs", "1e-4,2e-5", "--student-samples", "0", "--report-only",
                         *(["--skip-arms", "sft+grpo,grpo"] if quality.grpo_available() else [])]) == 0
    cut = json.loads(json_path.read_text())
    assert cut["selection"] is None and cut["stage_b"] is None and not (Path(args.out) / "selection.json").exists()
    assert cut["stage_a"]["arms"]["apo_zero"]["training"]["last"]["logps/chosen"] == -5.0
    md = Path(str(json_path).replace(".json", ".md")).read_text()
    assert "Nothing was picked" in md and "held-out tasks were never touched" in md


def test_help_shows_the_single_gpu_command(quality, capsys):
    with pytest.raises(SystemExit):
        quality.parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "python benchmarks/quality.py --device cuda --jobs 9" in help_text
    assert quality.GPU_COMMAND.startswith("python benchmarks/quality.py --device cuda")
