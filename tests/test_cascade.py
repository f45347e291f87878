"""The verifier-gated cascade: it escalates exactly when the gold-free check rejects an answer, its cost adds up, and
best-of-k votes among schema-valid samples. Expectations come from how distill/testing/fleet_world.py built each answer
(right, a schema-valid wrong value, a missing required argument, malformed, an unknown function)."""

from __future__ import annotations

import json

import pytest

from distill.fleet.cascade import (
    Member,
    check_answer,
    cost_ladder,
    fleet_members,
    ladder_from,
    member_outcomes,
    read_answers,
    read_verdicts,
    run_cascade,
    vote,
)
from distill.testing.fleet_world import MEMBERS, answer, build_world, correct_by_construction, error_kind
from eval.tasks import task_from_dict

VISIBLE = {"schema", "malformed", "unknown_function"}  # wrong answers a gold-free check can see


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("cascade_world"), n_calib=5, n_heldout=20, samples=5,
                       best_of={"flights-mid": 3})


def rejected_by_construction(member: str, task: dict, sample: int = 0) -> bool:
    return not correct_by_construction(member, task, sample) and error_kind(member, task["id"], sample) in VISIBLE


def outcomes_by_task(world, k_for=lambda m: 1):
    members = fleet_members(world.fleet)
    ids = list(world.tasks)
    by_task = {t: {} for t in ids}
    for m in members:
        vs = read_verdicts(m.verdicts, ids)
        answers = read_answers(m.verdicts.parent / "traces.jsonl", ids)
        for t, o in member_outcomes(m.name, vs, k_for(m), answers).items():
            by_task[t][m.name] = o
    return members, by_task


def test_cascade_escalates_exactly_when_the_verifier_rejects(world):
    members, by_task = outcomes_by_task(world)
    ladder = cost_ladder(members)
    assert [m.name for m in ladder] == ["weather-small", "math-small", "flights-mid", "teacher"]
    escalations = 0
    for tid, outcomes in by_task.items():
        task = world.tasks[tid]
        r = run_cascade(ladder, outcomes)
        for name in r.tried[:-1]:  # everyone passed over was rejected ...
            assert rejected_by_construction(name, task)
        if r.accepted:  # ... and the one that answered was not, so nobody after it was asked
            assert not rejected_by_construction(r.answered_by, task)
        else:
            assert r.tried == [m.name for m in ladder] and all(rejected_by_construction(n, task) for n in r.tried)
        expected_first = next((m.name for m in ladder if not rejected_by_construction(m.name, task)), ladder[-1].name)
        assert r.answered_by == expected_first
        assert r.correct == correct_by_construction(r.answered_by, task)  # a schema-valid wrong value gets through
        assert r.cost == pytest.approx(sum(MEMBERS[n][1] for n in r.tried))
        escalations += len(r.tried) > 1
    assert 0 < escalations < len(by_task)  # the world exercises both paths


def test_best_of_votes_among_schema_valid_samples_and_costs_k_samples(world):
    members, by_task = outcomes_by_task(world, k_for=lambda m: m.best_of)
    mid = next(m for m in members if m.name == "flights-mid")
    assert mid.best_of == 3 and mid.request_cost == 9.0
    for tid, outcomes in by_task.items():
        task = world.tasks[tid]
        o = outcomes["flights-mid"]
        assert o.samples == 3
        valid = [s for s in range(3) if not rejected_by_construction("flights-mid", task, s)]
        assert o.accepted == bool(valid)
        if valid:  # right answers are one call; wrong values differ per sample, so a second right answer wins
            right = [s for s in valid if correct_by_construction("flights-mid", task, s)]
            expected = len(right) >= 2 or (len(right) == 1 and valid[0] == right[0])
            assert o.correct == expected, (tid, valid, right)
        r = run_cascade(cost_ladder(members), outcomes)
        if "flights-mid" in r.tried:
            paid = sum(MEMBERS[n][1] * (3 if n == "flights-mid" else 1) for n in r.tried)
            assert r.cost == pytest.approx(paid)


def test_vote_picks_the_most_frequent_valid_call_earliest_on_ties():
    v = lambda s, valid, right: {"task_id": "t", "sample": s, "schema_valid": valid, "correct": right}  # noqa: E731
    samples = [v(0, False, False), v(1, True, False), v(2, True, True), v(3, True, True)]
    assert vote(samples, [None, "B", "A", "A"]).correct  # A twice beats B once
    assert not vote(samples[:3], [None, "B", "A"]).correct  # one each: the earliest valid sample (B)
    none = vote([v(0, False, False), v(1, False, True)], [None, "A"])
    assert not none.accepted and not none.correct and none.samples == 2  # nothing valid: escalate, 2 samples paid


def test_router_ordered_ladder_starts_at_the_pick_and_climbs():
    ms = [Member("a", 1, None), Member("b", 2, {"math"}), Member("c", 4, None, best_of=3), Member("d", 10, None)]
    assert [m.name for m in ladder_from(ms[1], ms, "math")] == ["b", "d", "c"]  # c costs 12 per request (best-of-3)
    assert [m.name for m in ladder_from(ms[1], ms, "weather")] == ["b", "d", "c"]
    assert [m.name for m in cost_ladder(ms, "weather")] == ["a", "d", "c"]  # b is not admitted for weather
    assert [m.name for m in cost_ladder(ms, "nobody-admitted-here")] == ["a", "d", "c"]


def test_check_answer_on_live_outputs(world):
    task = next(t for t in world.tasks.values() if t["category"] == "math")
    request = task_from_dict({"id": "request", "messages": task["messages"], "tools": task["tools"], "expected": []})
    for member in MEMBERS:
        for s in range(5):
            ok = correct_by_construction(member, task, s)
            raw = answer(task, member, s, ok)
            c = check_answer(request, raw)
            assert c.accepted == (ok or error_kind(member, task["id"], s) == "wrong_value"), (raw, c)
            assert c.accepted or c.reason
    structured = [{"id": "1", "type": "function", "function": {"name": "calculate_area",
                                                               "arguments": json.dumps({"shape": "circle", "size": 2})}}]
    assert check_answer(request, None, structured).accepted
    structured[0]["function"]["arguments"] = json.dumps({"shape": "circle", "size": "two"})
    c = check_answer(request, "", structured)
    assert not c.accepted and "size" in c.reason
    structured[0]["function"]["name"] = "calc"
    assert "unknown function 'calc'" in check_answer(request, "", structured).reason
    assert check_answer(request, "I cannot compute that.").accepted  # an answer without a call may be an abstention
    assert check_answer(request, '<tool_call>{"name": ').reason.startswith("malformed")
