"""benchmarks/fleet_quality.py: its split keeps training, calibration and held-out tasks apart, every stage is a
command the real parsers accept, the live stage serves each member as its evaluation loaded it, the targets are read
off a fleet eval result as the issue states them, and a student added with --member (checked before anything runs)
is evaluated by `distill eval`, admitted, routed and listed in the results with where it came from (run for real
on a tiny model and adapter, the built-in members' answers made up and scored by the real verifier)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from distill.cli import build_parser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fleet_quality  # noqa: E402


def _source(path: Path, cats: dict[str, int]) -> None:
    rows = [{"id": f"{c}_{i}", "category": c, "messages": [{"role": "user", "content": "q"}], "tools": [],
             "expected": []} for c, n in cats.items() for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_split_is_disjoint_seeded_and_sized(tmp_path, capsys):
    args = fleet_quality.parse_args(["--out", str(tmp_path), "--calib-per-category", "5", "--train-per-category", "7",
                                     "--eval-per-category", "4"])
    _source(tmp_path / "train_source.jsonl", {"live_simple": 20, "live_irrelevance": 9})
    _source(tmp_path / "heldout_source.jsonl", {"simple_python": 10, "irrelevance": 3})
    fleet_quality.split_tasks(args)
    read = lambda n: [json.loads(x)["id"] for x in (tmp_path / n).read_text().splitlines()]  # noqa: E731
    train, calib, held = read("train_tasks.jsonl"), read("calib.jsonl"), read("heldout.jsonl")
    assert not set(train) & set(calib)
    assert sum(i.startswith("live_simple") for i in calib) == 5 and sum(i.startswith("live_simple") for i in train) == 7
    # 9 tasks cannot give 5 to calibration and 7 to training: shared in proportion (9 x 5/12 = 3.75), said so
    assert sum(i.startswith("live_irr") for i in calib) == 4 and sum(i.startswith("live_irr") for i in train) == 5
    assert "live_irrelevance has 9 tasks" in capsys.readouterr().err
    assert len(held) == 7 and all(not i.startswith("live") for i in held)
    first = (train, calib, held)
    for name in ("train_tasks.jsonl", "calib.jsonl", "heldout.jsonl"):
        (tmp_path / name).unlink()
    fleet_quality.split_tasks(args)
    assert (read("train_tasks.jsonl"), read("calib.jsonl"), read("heldout.jsonl")) == first


def test_calibration_count_shares_a_small_category_in_proportion():
    count = fleet_quality.calibration_count
    assert count(258, 60, 200) == 60 and count(1000, 60, 200) == 60  # enough (or nearly) for both: as asked
    assert count(16, 60, 200) == 4 and count(24, 60, 200) == 6  # BFCL's live_parallel and live_parallel_multiple
    assert count(16, 60, 0) == 16 and count(100, 60, 0) == 60  # training takes whatever is left: calibration first
    assert count(3, 0, 200) == 0


def test_calibrating_on_held_out_categories_keeps_training_and_held_out_the_same(tmp_path):
    def split(folder: Path, *extra: str) -> tuple[list[str], list[str], list[str]]:
        folder.mkdir()
        _source(folder / "train_source.jsonl", {"live_simple": 20, "live_irrelevance": 9})
        _source(folder / "heldout_source.jsonl", {"simple_python": 12, "irrelevance": 9})
        fleet_quality.split_tasks(fleet_quality.parse_args(
            ["--out", str(folder), "--calib-per-category", "5", "--train-per-category", "7", "--eval-per-category", "4",
             *extra]))
        return tuple([json.loads(x)["id"] for x in (folder / n).read_text().splitlines()]
                     for n in ("train_tasks.jsonl", "calib.jsonl", "heldout.jsonl"))

    train, calib, held = split(tmp_path / "a", "--calibrate-on", "held-out")
    assert (train, held) == (lambda t, _, h: (t, h))(*split(tmp_path / "b"))  # the same students, the same held-out
    assert not set(calib) & set(held) and not set(calib) & set(train)
    assert sorted(i.rsplit("_", 1)[0] for i in calib) == ["irrelevance"] * 5 + ["simple_python"] * 5
    with pytest.raises(SystemExit, match="irrelevance has 9 tasks"):  # 4 held-out + 6 calibration do not fit in 9
        folder = tmp_path / "c"
        folder.mkdir()
        _source(folder / "train_source.jsonl", {"live_simple": 20})
        _source(folder / "heldout_source.jsonl", {"irrelevance": 9})
        fleet_quality.split_tasks(fleet_quality.parse_args(["--out", str(folder), "--calib-per-category", "6",
                                                            "--eval-per-category", "4", "--calibrate-on", "held-out"]))
    folders = [fleet_quality.results_folder(fleet_quality.parse_args(["--results", str(tmp_path), *x])).name
               for x in ([], ["--calibrate-on", "held-out", "--device", "cuda"])]
    assert folders[0].endswith("-cpu") and folders[1].endswith("-gpu-calibrated-on-held-out")  # side by side


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_every_stage_parses_and_members_are_served_as_evaluated(tmp_path, device):
    args = fleet_quality.parse_args(["--out", str(tmp_path / "run"), "--device", device])
    stages = fleet_quality.plan(args)
    names = [s.name for s in stages]
    assert names.index("train sft") < names.index("eval smollm2-sft calib") < names.index("admit smollm2-sft")
    assert names.index("fit") < names.index("fleet eval") < names.index("live")
    parser = build_parser()
    for s in stages:
        if s.argv[0].startswith("python:"):
            continue
        if s.argv[0] == "train":
            assert s.argv[1].endswith("recipes/demo/sft.yaml") and "--use_cpu" in s.argv
            continue
        parser.parse_args(s.argv)  # raises SystemExit on a flag the command does not have
    evals = {s.name: s.argv for s in stages if s.argv[0] == "eval"}
    for member in fleet_quality.MEMBERS:
        served = parser.parse_args(["serve", *fleet_quality.serve_model_args(member, tmp_path / "run")])
        evaluated = parser.parse_args(evals[f"eval {member} heldout"])
        assert served.chat_template == evaluated.chat_template
        assert served.model in (evaluated.model, evaluated.adapter)  # the run folder is serve's positional
        assert evaluated.temperature == 0
    heldout_eval = next(s.argv for s in stages if s.name == "fleet eval")
    assert heldout_eval[heldout_eval.index("--tasks") + 1].endswith("heldout.jsonl")
    fit = next(s.argv for s in stages if s.name == "fit")
    assert fit[fit.index("--tasks") + 1].endswith("calib.jsonl")


def test_targets_read_as_the_issue_states_them():
    rows = [
        {"name": "a", "kind": "single", "k": 1, "accuracy": 0.30, "cost": 0.135},
        {"name": "b", "kind": "single", "k": 1, "accuracy": 0.35, "cost": 0.135},
        {"name": "c", "kind": "single", "k": 1, "accuracy": 0.10, "cost": 0.27},
        {"name": "oracle", "kind": "oracle", "k": None, "accuracy": 0.60, "cost": 0.15},
        {"name": "router a=0.9", "kind": "router", "k": None, "accuracy": 0.48, "cost": 0.14},
        {"name": "router+cascade a=0.9", "kind": "router+cascade", "k": None, "accuracy": 0.46, "cost": 0.2},
    ]
    t = fleet_quality.targets({"rows": rows, "router_alpha": 0.9})
    assert t["best_member"] == {"name": "b", "accuracy": 0.35} and t["dearest_member"]["name"] == "c"
    assert t["routed"]["name"] == "router a=0.9" and t["gain_over_best_points"] == 13.0
    assert t["beats_best_by_10_at_lower_cost"] and not t["router_within_10_of_oracle"]
    assert t["router_gap_to_oracle_points"] == 12.0


def test_reading_states_targets_and_the_live_check():
    rows = [
        {"name": "a", "kind": "single", "k": 1, "accuracy": 0.30, "cost": 0.135, "ci95": 0.1, "answered_by": {"a": 9}},
        {"name": "b", "kind": "single", "k": 1, "accuracy": 0.35, "cost": 0.27, "ci95": 0.1, "answered_by": {"b": 9}},
        {"name": "oracle", "kind": "oracle", "k": None, "accuracy": 0.60, "cost": 0.15, "ci95": 0.1, "answered_by": {}},
        {"name": "router a=0.9", "kind": "router", "k": None, "accuracy": 0.40, "cost": 0.14, "ci95": 0.1,
         "answered_by": {"a": 5, "b": 4}},
        {"name": "router+cascade a=0.9", "kind": "router+cascade", "k": None, "accuracy": 0.41, "cost": 0.2,
         "ci95": 0.1, "answered_by": {"a": 5, "b": 4}},
    ]
    placed = {"by_category": {"x": {"n": 9, "placed": {"live_x": 6, "live_y": 3}, "router_accuracy": 0.4}},
              "calibration_categories": ["live_x", "live_y"], "unseen": ["x"]}
    ev = {"rows": rows, "router_alpha": 0.9, "n": 9, "abstain_policy": "admitted", "placement": placed}
    member = {"calib": {"strict_accuracy": 0.5}, "heldout": {"strict_accuracy": 0.3, "by_category": {"x": 0.3}},
              "source": "built in", "spec": None, "base_model": "org/a", "adapter": None, "cost": 0.135}
    added = {**member, "source": "--member LoRA adapter ck/dpo", "spec": "ck/dpo", "adapter": "ck/dpo",
             "calib": {"strict_accuracy": 0.5, "ran_on": ["cuda float32"]},
             "heldout": {**member["heldout"], "ran_on": ["cpu float32", "cuda float32", "unrecorded"]}}
    res = {"date": "2026-12-02", "device": "cpu", "targets": fleet_quality.targets(ev), "members": {"a": member, "b": added},
           "router": {"embedder": "minilm", "predictor": "logistic"},
           "settings": {"eval_categories": "x", "eval_per_category": 9, "train_categories": "live_x",
                        "calib_per_category": 9, "steps": 2, "train_batch_size": 4, "train_per_category": 5,
                        "max_new_tokens": 64}}
    text = fleet_quality.reading(res, ev, {"n": 3, "decisions_match": 3, "answers_match": 2, "strategy": "s",
                                           "fleet_serve_abstain_policy": False})
    assert "+6.0 points (target +10)" in text and "missed, by 4.0 points" in text
    assert "20.0 points below (target: within 10): missed, by 10.0 points" in text
    assert "matched the replayed decisions (s) for 3 of 3" in text and "accepts every no-call answer" in text
    assert "- a: built in; base model org/a; cost 0.135" in text
    assert ("- b: --member LoRA adapter ck/dpo; base model org/a, adapter ck/dpo; cost 0.135; answers generated on "
            "cpu float32 and cuda float32 and a device not recorded") in text
    assert "trained elsewhere" in text and "before 2 `distill serve` members" in text
    assert "| x | 9 | live_x 6, live_y 3 | 0.400 |" in text  # where the router placed the held-out requests
    assert "The live members ran on" not in text
    res["settings"].update(device="cuda", live_device="cpu")
    text = fleet_quality.reading(res, ev, {"n": 3, "decisions_match": 3, "answers_match": 2, "strategy": "s",
                                           "fleet_serve_abstain_policy": True})
    assert "The live members ran on the CPU, their evaluations on the GPU" in text


# --- --member NAME=SPEC -------------------------------------------------------------------------------------------


def _bad_member(tmp_path, capsys, *values) -> str:
    with pytest.raises(SystemExit) as e:
        fleet_quality.parse_args(["--out", str(tmp_path / "run"), *[x for v in values for x in ("--member", v)]])
    assert e.value.code == 2
    return capsys.readouterr().err


def test_member_values_are_refused_before_anything_runs(tmp_path, capsys, tiny_adapter_dir, tiny_model_dir):
    empty = tmp_path / "empty"
    empty.mkdir()
    (tmp_path / "notes.txt").write_text("x")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "adapter_config.json").write_text("{not json")
    ok = f"dpo={tiny_adapter_dir}"
    assert "expected NAME=SPEC" in _bad_member(tmp_path, capsys, str(tiny_adapter_dir))
    assert "expected NAME=SPEC" in _bad_member(tmp_path, capsys, "dpo=")
    assert "'smollm2-sft' is a built-in member" in _bad_member(tmp_path, capsys, f"smollm2-sft={tiny_adapter_dir}")
    assert "'dpo' is given twice" in _bad_member(tmp_path, capsys, ok, f"dpo={tiny_model_dir}")
    assert "letters, digits" in _bad_member(tmp_path, capsys, f"a/b={tiny_adapter_dir}")
    err = _bad_member(tmp_path, capsys, f"dpo={tmp_path / 'nowhere'}")
    assert f"--member dpo={tmp_path / 'nowhere'}" in err and "no such adapter or model folder" in err
    assert "neither adapter_config.json" in _bad_member(tmp_path, capsys, f"dpo={empty}")
    assert "not valid JSON" in _bad_member(tmp_path, capsys, f"dpo={broken}")
    assert "not a .gguf model" in _bad_member(tmp_path, capsys, f"dpo={tmp_path / 'notes.txt'}")
    assert "unknown packaged model 'pkg:nope'" in _bad_member(tmp_path, capsys, "dpo=pkg:nope")
    args = fleet_quality.parse_args(["--out", str(tmp_path / "run"), "--member", ok, "--member", f"raw={tiny_model_dir}"])
    assert [(e.name, e.kind) for e in args.extra] == [("dpo", "adapter"), ("raw", "model")]
    assert fleet_quality.members(args) == [*fleet_quality.MEMBERS, "dpo", "raw"]


def test_added_members_get_every_stage_and_are_served_as_evaluated(tmp_path, tiny_adapter_dir, tiny_model_dir):
    args = fleet_quality.parse_args(["--out", str(tmp_path / "run"), "--member", f"dpo={tiny_adapter_dir}",
                                     "--member", f"raw={tiny_model_dir}"])
    stages = {s.name: s.argv for s in fleet_quality.plan(args)}
    parser = build_parser()
    for name, path in (("dpo", tiny_adapter_dir), ("raw", tiny_model_dir)):
        assert "train" not in [a[0] for s, a in stages.items() if name in s]  # used as it is, never trained here
        evaluated = parser.parse_args(stages[f"eval {name} calib"])
        assert (evaluated.adapter, evaluated.model) == ((str(path), None) if name == "dpo" else (None, str(path)))
        assert stages[f"admit {name}"][stages[f"admit {name}"].index("--name") + 1] == name
        served = parser.parse_args(["serve", *fleet_quality.serve_model_args(name, tmp_path / "run",
                                                                            fleet_quality._extra(args, name))])
        assert served.model == str(path) and served.chat_template is None
        assert f"{name}=" in " ".join(stages["fleet eval"])
    short = fleet_quality.plan(fleet_quality.parse_args(["--out", str(tmp_path / "run"), "--member",
                                                         f"dpo={tiny_adapter_dir}", "--stop-after", "members"]))
    assert short[-1].name == "eval dpo heldout" and not any(s.name.startswith(("admit", "fit")) for s in short)
    split_only = fleet_quality.plan(fleet_quality.parse_args(["--out", str(tmp_path / "run"), "--stop-after", "split"]))
    assert [s.name for s in split_only] == ["import", "import", "split"]
    # the live stage serves each member as evaluated, on --live-device when given (a GPU run finished on a CPU)
    for flags, device in (([], "cpu"), (["--device", "cuda"], "cuda"), (["--device", "cuda", "--live-device", "cpu"], "cpu")):
        live_args = fleet_quality.parse_args(["--out", str(tmp_path / "run"), "--member", f"dpo={tiny_adapter_dir}", *flags])
        served = parser.parse_args(fleet_quality.live_serve_argv(live_args, "dpo", 8123))
        assert (served.model, served.device, served.port, served.served_name) == (str(tiny_adapter_dir), device, 8123, "dpo")


def test_a_working_folder_refuses_other_members(tmp_path, tiny_adapter_dir, capsys):
    run = tmp_path / "run"
    fleet_quality.check_members_file(fleet_quality.parse_args(["--out", str(run)]))
    assert json.loads((run / "members.json").read_text()) == {m: "built-in" for m in fleet_quality.MEMBERS}
    with_dpo = fleet_quality.parse_args(["--out", str(run), "--member", f"dpo={tiny_adapter_dir}"])
    with pytest.raises(SystemExit) as e:
        fleet_quality.check_members_file(with_dpo)
    assert e.value.code == 2 and "use another --out" in capsys.readouterr().err
    fleet_quality.check_members_file(fleet_quality.parse_args(["--out", str(run)]))  # the same members: resumes
    legacy = tmp_path / "legacy"  # a folder from before members.json: its fleet holds the built-in members
    legacy.mkdir()
    (legacy / "fleet.yaml").write_text("version: 1\nmembers: []\n")
    with pytest.raises(SystemExit):
        fleet_quality.check_members_file(fleet_quality.parse_args(["--out", str(legacy), "--member",
                                                                   f"dpo={tiny_adapter_dir}"]))


def _made_up_run(out: Path, model: Path) -> None:
    """A working folder as the stages before the member evaluations leave it, with the built-in members' answers
    made up (fleet_world's members, right by construction on their own domain) and scored by the real verifier."""
    from distill.testing.fleet_world import DOMAINS, answer, correct_by_construction, make_task, write_jsonl
    from distill.testing.fleet_world import MEMBERS as WORLD
    from eval.report import score_traces

    calib = [make_task(d, i) for d in DOMAINS for i in range(10)]
    held = [make_task(d, i) for d in DOMAINS for i in range(10, 14)]
    write_jsonl(out / "calib.jsonl", calib)
    write_jsonl(out / "heldout.jsonl", held)
    for name in ("train_source.jsonl", "heldout_source.jsonl", "train_tasks.jsonl", "pairs/pairs_stats.json",
                 "checkpoints/sft/adapter_model.safetensors"):
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_text("")
    for name, like in zip(fleet_quality.MEMBERS, WORLD, strict=False):  # weather-small, math-small, flights-mid
        for split, tasks in (("calib", calib), ("heldout", held)):
            folder = out / "members" / name / split
            write_jsonl(folder / "traces.jsonl", [{"task_id": t["id"], "model": str(model), "sample": 0,
                                                   "raw": answer(t, like, 0, correct_by_construction(like, t))}
                                                  for t in tasks])
            score_traces(out / f"{split}.jsonl", [folder / "traces.jsonl"], folder, model=str(model), plots=False)


def test_an_added_student_is_evaluated_admitted_routed_and_reported(tmp_path, tiny_adapter_dir, tiny_model_dir):
    import yaml

    out = tmp_path / "run"
    _made_up_run(out, tiny_model_dir)
    args = fleet_quality.parse_args(["--out", str(out), "--results", str(tmp_path / "results"), "--member",
                                     f"tiny-dpo={tiny_adapter_dir}", "--eval-categories", "weather,math,flights",
                                     "--max-new-tokens", "8"])
    fleet_quality.check_members_file(args)
    stages = fleet_quality.plan(args)
    ran = fleet_quality.run([s for s in stages if s.name != "live"], args)  # live would serve the real models
    assert {k.split(" ", 1)[1] for k, v in ran.items() if v != "skipped"} == {
        "eval tiny-dpo calib", "eval tiny-dpo heldout", *(f"admit {m}" for m in fleet_quality.members(args)), "fit",
        "fit clusters", "fleet eval", "fleet eval clusters"}
    report = json.loads((out / "members" / "tiny-dpo" / "heldout" / "report.json").read_text())
    assert report["n"] == 12 and report["model"] == str(tiny_model_dir)  # `distill eval` ran the adapter on its base
    fleet = {m["name"]: m for m in yaml.safe_load((out / "fleet.yaml").read_text())["members"]}
    dpo = fleet["tiny-dpo"]
    params = sum(p.numel() for p in __import__("transformers").AutoModelForCausalLM.from_pretrained(
        tiny_model_dir).parameters())
    assert dpo["parameters"] == params and dpo["cost"] == pytest.approx(params / 1e9)  # the base model's count
    assert Path(out / dpo["adapter"]).resolve() == tiny_adapter_dir.resolve()
    router = json.loads((out / "router" / "router.json").read_text())
    assert "tiny-dpo" in router["members"]
    ev = json.loads((out / "fleet_eval" / "fleet_eval.json").read_text())
    assert "tiny-dpo" in {r["name"] for r in ev["rows"]}
    (out / "live.json").write_text(json.dumps({"strategy": "s", "n": 0, "decisions_match": 0, "answers_match": 0,
                                               "fleet_serve_abstain_policy": True, "requests": []}))
    folder = fleet_quality.write_results(args, ran)
    res = json.loads((folder / "results.json").read_text())
    assert res["members"]["tiny-dpo"]["source"] == f"--member LoRA adapter {tiny_adapter_dir}"
    assert res["members"]["tiny-dpo"]["heldout"]["n"] == 12
    text = (folder / "README.md").read_text()
    assert f"- tiny-dpo: --member LoRA adapter {tiny_adapter_dir}; base model {tiny_model_dir}, adapter " \
           f"{tiny_adapter_dir}; cost {params / 1e9:.3g}" in text
    assert f"- smollm2-sft: {fleet_quality.BUILTIN['smollm2-sft']}" in text
    assert "| tiny-dpo |" in text and "before 4 `distill serve` members" in text
    assert "Where the router placed the requests" in text and ev["placement"]["unseen"] == []


def test_a_model_distill_converted_is_named_by_its_source_not_the_cache_path(tmp_path):
    """A --member adapter's base model is often the folder distill converted a pkg: model into (its
    adapter_config.json names it): the results name the pkg: source, not this machine's cache path."""
    import yaml

    from data_gen.local_models import INFO_FILE

    converted, plain = tmp_path / "cache" / "smollm2-135m-instruct-0123", tmp_path / "my-model"
    converted.mkdir(parents=True)
    plain.mkdir()
    (converted / INFO_FILE).write_text(json.dumps({"source": "pkg:smollm2-135m-instruct", "format": 1}))
    out = tmp_path / "run"
    out.mkdir()
    (out / "fleet.yaml").write_text(yaml.safe_dump({"version": 1, "members": [
        {"name": "smollm2-base", "base_model": str(converted), "cost": 0.135},
        {"name": "smollm2-sft", "base_model": str(plain), "adapter": "checkpoints/sft", "cost": 0.135}]}))
    sources = fleet_quality.member_sources(fleet_quality.parse_args(["--out", str(out)]))
    assert sources["smollm2-base"]["base_model"] == "pkg:smollm2-135m-instruct"
    assert Path(sources["smollm2-sft"]["base_model"]).resolve() == plain.resolve()  # a plain folder stays a path
    assert sources["smollm2-sft"]["adapter"] == "checkpoints/sft"  # not on disk: as written
