"""`distill fleet eval` on a fleet with known strengths: every number in its table is recomputed here from how the
answers were built (distill/testing/fleet_world.py), the answer to "does the fleet beat the teacher?" follows from them, and
bad input fails with the file and the member named."""

from __future__ import annotations

import json

import numpy as np
import pytest

from distill.cli import main
from distill.fleet import load_fleet, save_fleet
from distill.testing.fleet_world import MEMBERS, build_world, correct_by_construction, error_kind

VISIBLE = {"schema", "malformed", "unknown_function"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = build_world(tmp_path_factory.mktemp("eval_world"), n_calib=25, n_heldout=20, samples=3)
    assert main(["fleet", "fit", "--fleet", str(w.fleet), "--tasks", str(w.calib), "--out", str(w.root / "router"),
                 "--embedder", "minilm-static"]) == 0
    return w


def heldout(world):
    ids = [json.loads(x)["id"] for x in world.heldout.read_text().splitlines()]
    return [world.tasks[i] for i in ids]


def test_fleet_eval_table_plot_and_answer(world, tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["fleet", "eval", "--fleet", str(world.fleet), "--tasks", str(world.heldout), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "fleet_eval.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    tasks = heldout(world)
    n = len(tasks)
    assert result["n"] == n == 60 and result["teacher"] == "teacher" and result["router_alpha"] == 0.9

    for m, (_, cost, _) in MEMBERS.items():  # single models: accuracy and cost by construction
        r = rows[m]
        assert r["accuracy"] == pytest.approx(np.mean([correct_by_construction(m, t) for t in tasks]), abs=1e-6)
        assert r["cost"] == cost and r["answered_by"] == {m: n}
        assert r["cost_vs_teacher"] == pytest.approx(cost / 20.0)
        assert rows[f"{m} best-of-3"]["cost"] == 3 * cost  # 3 samples in the verdicts: a best-of-3 row, at 3x cost
    oracle = rows["oracle"]
    assert oracle["accuracy"] == pytest.approx(np.mean([any(correct_by_construction(m, t) for m in MEMBERS) for t in tasks]))
    assert all(r["accuracy"] <= oracle["accuracy"] + 1e-9 for r in result["rows"] if r["k"] in (None, 1))

    # the cascade: cheapest first, climbing while the answer is visibly wrong; its cost is what it asked
    ladder = sorted(MEMBERS, key=lambda m: MEMBERS[m][1])
    acc = cost = escalated = 0
    for t in tasks:
        asked = []
        for m in ladder:
            asked.append(m)
            if correct_by_construction(m, t) or error_kind(m, t["id"], 0) not in VISIBLE:
                break
        acc += correct_by_construction(asked[-1], t)
        cost += sum(MEMBERS[m][1] for m in asked)
        escalated += len(asked) > 1
    c = rows["cascade"]
    assert c["accuracy"] == pytest.approx(acc / n) and c["cost"] == pytest.approx(cost / n)
    assert c["escalated"] == pytest.approx(escalated / n)
    assert sum(c["asked"][m] * MEMBERS[m][1] for m in c["asked"]) == pytest.approx(c["cost"] * n)  # accounting adds up
    assert sum(c["answered_by"].values()) == n

    # the router's alpha sweep and its combination with the cascade are all there, the router beats the teacher
    for a in ("0", "0.5", "0.9", "1"):
        assert f"router a={a}" in rows and f"router+cascade a={a}" in rows
    teacher = rows["teacher"]
    router = rows["router a=0.9"]
    assert router["accuracy"] > teacher["accuracy"] and router["cost"] < 0.25 * teacher["cost"]
    assert rows["router+cascade a=0.9"]["accuracy"] >= router["accuracy"]  # escalation only replaces rejected answers
    ans = result["answer"]
    cheapest = rows[ans["cheapest_matching"]]
    assert ans["beats_teacher"] and cheapest["accuracy"] >= teacher["accuracy"]
    assert cheapest["cost"] == min(r["cost"] for r in result["rows"] if r["accuracy"] >= teacher["accuracy"]
                                   and r["kind"] != "oracle" and r["member"] != "teacher")
    assert f"{100 * cheapest['cost'] / 20:.0f}% of its cost" in ans["text"]
    # Pareto flags: nothing flagged is beaten on both axes
    front = [r for r in result["rows"] if r["pareto"]]
    assert front and all(not (o["accuracy"] > r["accuracy"] and o["cost"] < r["cost"]) for r in front for o in result["rows"]
                         if o["kind"] != "oracle")

    # k samples of a small model against one sample of a larger one at (at least) the same cost
    bo = {b["best_of"]: b for b in result["best_of_vs_larger"]}
    b = bo["flights-mid best-of-3"]  # cost 9: the cheapest single sample costing as much is the teacher's (20)
    assert (b["larger"], b["larger_cost"]) == ("teacher", 20.0)
    assert b["best_of_wins"] == (rows["flights-mid best-of-3"]["accuracy"] > rows["teacher"]["accuracy"])
    assert "teacher best-of-3" not in bo  # nothing single costs 60

    md = (out / "fleet_eval.md").read_text()
    assert "Test-time compute or a larger model?" in md
    assert ans["text"] in md and "| cascade |" in md and ans["text"] in printed
    assert (out / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    decisions = [json.loads(x) for x in (out / "decisions.jsonl").read_text().splitlines()]
    casc = [d for d in decisions if d["strategy"] == "cascade"]
    assert len(casc) == n and sum(d["cost"] for d in casc) == pytest.approx(c["cost"] * n)


def test_teacher_from_a_report_folder(world, tmp_path):
    fleet = load_fleet(world.fleet)
    students = [dict(m, verdicts=str(world.root / m["verdicts"])) for m in fleet["members"] if m["name"] != "teacher"]
    save_fleet(tmp_path / "fleet.yaml", {"version": 1, "members": students})
    assert main(["fleet", "eval", "--fleet", str(tmp_path / "fleet.yaml"), "--tasks", str(world.heldout), "--out",
                 str(tmp_path / "eval"), "--teacher", str(world.report_dir("teacher")), "--no-plots"]) == 2
    assert main(["fleet", "eval", "--fleet", str(tmp_path / "fleet.yaml"), "--tasks", str(world.heldout), "--out",
                 str(tmp_path / "eval"), "--teacher", str(world.report_dir("teacher")), "--teacher-cost", "20",
                 "--no-plots", "--best-of", ""]) == 0
    result = json.loads((tmp_path / "eval" / "fleet_eval.json").read_text())
    rows = {r["name"]: r for r in result["rows"]}
    assert result["teacher"] == "teacher" and result["router"] is None  # this fleet file has no router
    assert rows["teacher"]["accuracy"] == pytest.approx(np.mean([correct_by_construction("teacher", t) for t in heldout(world)]))
    assert rows["cascade"]["asked"].get("teacher", 0) > 0  # the given teacher tops the cascade
    assert not any("best-of" in name for name in rows)


def test_missing_verdicts_name_the_member_and_the_way_out(world, tmp_path, capsys):
    other = tmp_path / "more.jsonl"  # held-out tasks nobody was scored on
    other.write_text(world.heldout.read_text().replace('"id": "', '"id": "new_'))
    assert main(["fleet", "eval", "--fleet", str(world.fleet), "--tasks", str(other), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "member 'weather-small'" in err and "no verdict for 60 of the 60 tasks" in err and "--verdicts weather-small=" in err
    assert not (tmp_path / "e").exists()
    # --verdicts points a member at another file; an unknown name is refused
    assert main(["fleet", "eval", "--fleet", str(world.fleet), "--tasks", str(world.heldout), "--out", str(tmp_path / "e"),
                 "--verdicts", "nobody=x.jsonl"]) == 2
    assert "--verdicts names nobody" in capsys.readouterr().err
    assert main(["fleet", "eval", "--fleet", str(world.fleet), "--tasks", str(world.heldout), "--out", str(tmp_path / "e"),
                 "--verdicts", f"teacher={world.report_dir('math-small')}", "--no-plots", "--best-of", ""]) == 0
    rows = {r["name"]: r for r in json.loads((tmp_path / "e" / "fleet_eval.json").read_text())["rows"]}
    assert rows["teacher"]["accuracy"] == rows["math-small"]["accuracy"]


def test_placement_counts_where_each_declared_category_went():
    from distill.fleet.evaluate import placement, placement_lines

    declared = {"a": "irrelevance", "b": "irrelevance", "c": "irrelevance", "d": "simple", "e": None}
    routed = {"a": "live_irrelevance", "b": "live_simple", "c": "live_simple", "d": "live_simple", "e": "live_simple"}
    correct = {"a": True, "b": False, "c": True, "d": True, "e": True}
    p = placement(declared, routed, correct, ["live_simple", "live_irrelevance", None, "live_simple"])
    assert p["by_category"] == {  # the task without a category is left out; most frequent placement first
        "irrelevance": {"n": 3, "placed": {"live_simple": 2, "live_irrelevance": 1}, "router_accuracy": pytest.approx(2 / 3)},
        "simple": {"n": 1, "placed": {"live_simple": 1}, "router_accuracy": 1.0}}
    assert p["calibration_categories"] == ["live_irrelevance", "live_simple"]
    assert p["unseen"] == ["irrelevance", "simple"]
    assert "| irrelevance | 3 | live_simple 2, live_irrelevance 1 | 0.667 |" in placement_lines(p, 0.9)
    assert placement({"a": "x"}, {}, {}, ["x"])["by_category"]["x"]["placed"] == {"(none)": 1}
    assert placement({"a": None}, {"a": "x"}, {"a": True}, ["x"]) is None


def test_router_cascade_does_not_climb_to_a_member_never_right(tmp_path, capsys):
    """A member right on no calibration task, dearer than the specialists and cheaper than the teacher, is left out of
    the router+cascade ladder at alpha 0.9 (its predicted accuracy buys nothing for its cost); the `[every rung]` row
    climbs through it, pays for it and keeps some of its wrong answers (the schema-valid ones pass the check)."""
    from distill.fleet.cascade import fleet_members
    from distill.fleet.router import load_router
    from distill.testing.fleet_world import DOMAINS

    members = {**MEMBERS, "hopeless": ({d: 0.0 for d in DOMAINS}, 10.0, list(DOMAINS))}
    w = build_world(tmp_path / "w", n_calib=25, n_heldout=20, members=members)
    capsys.readouterr()
    assert main(["fleet", "fit", "--fleet", str(w.fleet), "--tasks", str(w.calib), "--out", str(w.root / "router"),
                 "--embedder", "minilm-static"]) == 0
    err = capsys.readouterr().err
    assert "right on none of the 75 calibration tasks: hopeless." in err and "leave it out of the fleet" in err
    out = tmp_path / "eval"
    assert main(["fleet", "eval", "--fleet", str(w.fleet), "--tasks", str(w.heldout), "--out", str(out),
                 "--teacher", "teacher", "--alphas", "0,0.9", "--no-plots", "--best-of", ""]) == 0
    rows = {r["name"]: r for r in json.loads((out / "fleet_eval.json").read_text())["rows"]}
    pruned, every = rows["router+cascade a=0.9"], rows["router+cascade a=0.9 [every rung]"]
    assert "hopeless" not in pruned["asked"] and every["asked"].get("hopeless", 0) > 0
    assert every["answered_by"].get("hopeless", 0) > 0 and pruned["accuracy"] >= every["accuracy"]
    decisions = [json.loads(x) for x in (out / "decisions.jsonl").read_text().splitlines()]
    kept = [d for d in decisions if d["strategy"] == "router+cascade a=0.9 [every rung]" and d["answered_by"] == "hopeless"]
    assert len(kept) == every["answered_by"]["hopeless"] and not any(d["correct"] for d in kept)
    # decisions.jsonl says, per router+cascade request, which ladder members were left out; the other rows do not
    pruned_rows = [d for d in decisions if d["strategy"] == "router+cascade a=0.9"]
    kept_ids = {d["task_id"] for d in kept}
    assert all("hopeless" in d["left_out"] for d in pruned_rows if d["task_id"] in kept_ids)
    assert all(not set(d["left_out"]) & set(d["tried"]) for d in pruned_rows)
    assert all("left_out" not in d for d in decisions if d["strategy"] == "router+cascade a=0.9 [every rung]")
    # at alpha 0 only cost counts: nothing is worth asking after the pick
    assert rows["router+cascade a=0"]["escalated"] == 0
    assert rows["router+cascade a=0"]["answered_by"] == rows["router a=0"]["answered_by"]

    router = load_router(w.root / "router", fleet_members(w.fleet))
    task = heldout(w)[0]
    d = router.route(task["messages"], task["tools"])
    assert "hopeless" in d.not_worth and "hopeless" in [m.name for m in d.every_rung]
    assert d.ladder == [m for m in d.every_rung if m.name != "hopeless"]
