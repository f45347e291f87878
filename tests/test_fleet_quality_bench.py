"""benchmarks/fleet_quality.py without running a model: its split keeps training, calibration and held-out tasks
apart, every stage is a command the real parsers accept, the live stage serves each member as its evaluation loaded
it, and the targets are read off a fleet eval result as the issue states them."""

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


def test_split_is_disjoint_seeded_and_sized(tmp_path):
    args = fleet_quality.parse_args(["--out", str(tmp_path), "--calib-per-category", "5", "--train-per-category", "7",
                                     "--eval-per-category", "4"])
    _source(tmp_path / "train_source.jsonl", {"live_simple": 20, "live_irrelevance": 9})
    _source(tmp_path / "heldout_source.jsonl", {"simple_python": 10, "irrelevance": 3})
    fleet_quality.split_tasks(args)
    read = lambda n: [json.loads(x)["id"] for x in (tmp_path / n).read_text().splitlines()]  # noqa: E731
    train, calib, held = read("train_tasks.jsonl"), read("calib.jsonl"), read("heldout.jsonl")
    assert not set(train) & set(calib)
    assert sum(i.startswith("live_simple") for i in calib) == 5 and sum(i.startswith("live_irr") for i in calib) == 5
    assert sum(i.startswith("live_simple") for i in train) == 7 and sum(i.startswith("live_irr") for i in train) == 4
    assert len(held) == 7 and all(not i.startswith("live") for i in held)
    first = (train, calib, held)
    for name in ("train_tasks.jsonl", "calib.jsonl", "heldout.jsonl"):
        (tmp_path / name).unlink()
    fleet_quality.split_tasks(args)
    assert (read("train_tasks.jsonl"), read("calib.jsonl"), read("heldout.jsonl")) == first


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
    ev = {"rows": rows, "router_alpha": 0.9, "n": 9, "abstain_policy": "admitted"}
    member = {"calib": {"strict_accuracy": 0.5}, "heldout": {"strict_accuracy": 0.3, "by_category": {"x": 0.3}}}
    res = {"date": "2026-12-02", "device": "cpu", "targets": fleet_quality.targets(ev), "members": {"a": member, "b": member},
           "router": {"embedder": "minilm", "predictor": "logistic"},
           "settings": {"eval_categories": "x", "eval_per_category": 9, "train_categories": "live_x",
                        "calib_per_category": 9, "steps": 2, "train_batch_size": 4, "train_per_category": 5,
                        "max_new_tokens": 64}}
    text = fleet_quality.reading(res, ev, {"n": 3, "decisions_match": 3, "answers_match": 2, "strategy": "s",
                                           "fleet_serve_abstain_policy": False})
    assert "+6.0 points (target +10)" in text and "missed, by 4.0 points" in text
    assert "20.0 points below (target: within 10): missed, by 10.0 points" in text
    assert "matched the replayed decisions (s) for 3 of 3" in text and "accepts every no-call answer" in text
