"""The cluster router on a fleet whose strengths are known by construction (distill/testing/fleet_world.py): each small member
is the best on one domain, the teacher is good everywhere and dear. Accuracies below are computed from the
construction (which member answers which task right), not from the verdicts the router was fit on."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from distill.cli import main
from distill.fleet import load_fleet, save_fleet
from distill.fleet.cascade import fleet_members
from distill.fleet.router import (
    _EMBEDDERS,
    STRUCTURE_DIMS,
    _words,
    embedding_dims,
    fit_logistic,
    load_router,
    name_cover,
    name_words,
    predict_logistic,
    question_text,
    registered_router,
    tools_text,
)
from distill.testing.fleet_world import DOMAINS, MEMBERS, build_world, correct_by_construction

SPECIALIST = {"weather": "weather-small", "math": "math-small", "flights": "flights-mid"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return build_world(tmp_path_factory.mktemp("router_world"))


def heldout(world):
    return [t for t in world.tasks.values() if t["id"] in {json.loads(x)["id"] for x in world.heldout.read_text().splitlines()}]


def routed_accuracy(world, router, alpha):
    tasks = heldout(world)
    emb = router.features([(t["messages"], t["tools"]) for t in tasks])
    picks = [router.decide(e, alpha=alpha).pick.name for e in emb]
    acc = np.mean([correct_by_construction(p, t) for p, t in zip(picks, tasks, strict=True)])
    return acc, picks, tasks


def test_default_minilm_router_beats_every_member_and_approaches_the_oracle(world, tmp_path, capsys):
    out = tmp_path / "router"
    assert main(["fleet", "fit", "--fleet", str(world.fleet), "--tasks", str(world.calib), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "embedder minilm" in printed and "4 members" in printed
    router = load_router(out, fleet_members(world.fleet))
    assert router.meta["embedder"] == "minilm" and router.alpha == 0.9
    acc, picks, tasks = routed_accuracy(world, router, alpha=router.alpha)

    singles = {m: np.mean([correct_by_construction(m, t) for t in tasks]) for m in MEMBERS}
    oracle = np.mean([any(correct_by_construction(m, t) for m in MEMBERS) for t in tasks])
    assert acc > max(singles.values()) + 0.05, (acc, singles)
    assert acc >= oracle - 0.05, (acc, oracle)
    # each domain goes to the member built to be best at it (cheaper than the teacher, nearly as good or better)
    for d in DOMAINS:
        mine = [p for p, t in zip(picks, tasks, strict=True) if t["category"] == d]
        assert mine.count(SPECIALIST[d]) >= 0.9 * len(mine), (d, mine)
    # the router is recorded in the fleet file, and the members admission wrote are untouched
    assert registered_router(world.fleet).resolve() == out.resolve()
    fleet = load_fleet(world.fleet)
    assert fleet["router"]["alpha"] == 0.9 and [m["name"] for m in fleet["members"]] == list(MEMBERS)


def test_alpha_trades_accuracy_for_cost(tmp_path):
    # every member admitted everywhere, so only alpha decides between them
    members = {name: (acc, cost, list(DOMAINS)) for name, (acc, cost, _) in MEMBERS.items()}
    world = build_world(tmp_path / "w", members=members)
    assert main(["fleet", "fit", "--fleet", str(world.fleet), "--tasks", str(world.calib), "--out",
                 str(tmp_path / "r"), "--embedder", "minilm-static"]) == 0
    router = load_router(tmp_path / "r", fleet_members(world.fleet))
    costs, accs = [], []
    for a in (0.0, 0.3, 0.6, 0.9, 1.0):
        acc, picks, _ = routed_accuracy(world, router, a)
        costs.append(np.mean([MEMBERS[p][1] for p in picks]))
        accs.append(acc)
        if a == 0.0:
            assert set(picks) == {"weather-small"}  # the cheapest member, whatever it knows
    assert costs == sorted(costs), costs  # more weight on accuracy never buys a cheaper fleet
    assert accs[-2] > accs[0] + 0.3


def test_static_embedder_routes_like_minilm_and_loading_reads_no_model(world, tmp_path):
    out = tmp_path / "router"
    assert main(["fleet", "fit", "--fleet", str(world.fleet), "--tasks", str(world.calib), "--out", str(out),
                 "--embedder", "minilm-static", "--no-register", "--clusters", "6"]) == 0
    router = load_router(out, fleet_members(world.fleet))
    acc, picks, tasks = routed_accuracy(world, router, router.alpha)
    for d in DOMAINS:
        mine = [p for p, t in zip(picks, tasks, strict=True) if t["category"] == d]
        assert mine.count(SPECIALIST[d]) >= 0.8 * len(mine), (d, mine)

    # a copy of the router with no calibration data and no verdicts beside it routes the same
    moved = tmp_path / "elsewhere" / "router"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    _EMBEDDERS.pop("minilm-static", None)
    again = load_router(moved, fleet_members(world.fleet))
    assert "minilm-static" not in _EMBEDDERS  # loading read two small files; the embedder loads on first use
    assert routed_accuracy(world, again, again.alpha)[1] == picks


def test_fleet_changes_after_fit(world, tmp_path, capsys):
    out = tmp_path / "router"
    assert main(["fleet", "fit", "--fleet", str(world.fleet), "--tasks", str(world.calib), "--out", str(out),
                 "--embedder", "minilm-static", "--no-register"]) == 0
    fleet = load_fleet(world.fleet)
    changed = tmp_path / "fleet.yaml"
    members = [m for m in fleet["members"] if m["name"] != "math-small"]
    members.append({**members[0], "name": "newcomer", "cost": 50.0, "categories": ["math"]})
    for m in members:  # paths relative to the new fleet file's folder
        m["verdicts"] = str(world.root / m["verdicts"])
    save_fleet(changed, {"version": 1, "members": members})
    capsys.readouterr()
    router = load_router(out, fleet_members(changed))
    err = capsys.readouterr().err
    assert "math-small" in err and "not routed to" in err
    assert "newcomer" in err and "only reached by escalation" in err and "admitted again" not in err
    fleet["members"][0]["admission"] = {"admitted_at": "2030-01-01T00:00:00+00:00"}  # weather-small re-admitted
    save_fleet(changed, {"version": 1, "members": [fleet["members"][0], *members[1:]]})
    load_router(out, fleet_members(changed))
    assert "admitted again since the router was fit: weather-small" in capsys.readouterr().err
    task = world.tasks["math_40"]
    d = router.route(task["messages"], task["tools"])
    assert "math-small" not in [m.name for m in d.ladder]
    assert [m.name for m in d.ladder] == ["teacher", "newcomer"]  # the only member admitted for math, then up the ladder


def test_fit_errors_name_the_file_and_write_nothing(world, tmp_path, capsys):
    fleet = load_fleet(world.fleet)
    bad = tmp_path / "fleet.yaml"
    members = [dict(m, verdicts=str(world.root / m["verdicts"])) for m in fleet["members"]]
    members[1]["verdicts"] = str(tmp_path / "nope" / "verdicts.jsonl")
    save_fleet(bad, {"version": 1, "members": members})
    out = tmp_path / "router"
    assert main(["fleet", "fit", "--fleet", str(bad), "--tasks", str(world.calib), "--out", str(out),
                 "--embedder", "minilm-static"]) == 2
    err = capsys.readouterr().err
    assert "math-small" in err and "nope/verdicts.jsonl" in err and "does not exist" in err
    assert not out.exists() and "router" not in load_fleet(bad)

    other = tmp_path / "other.jsonl"  # tasks the members were never scored on
    other.write_text(world.calib.read_text().replace('"id": "', '"id": "x'))
    members[1]["verdicts"] = str(world.root / "members/math-small/verdicts.jsonl")
    save_fleet(bad, {"version": 1, "members": members})
    assert main(["fleet", "fit", "--fleet", str(bad), "--tasks", str(other), "--out", str(out)]) == 2
    assert "cover none of the 90 tasks" in capsys.readouterr().err and not out.exists()

    assert main(["fleet", "fit", "--fleet", str(bad), "--tasks", str(world.calib), "--out", str(out),
                 "--clusters", "500", "--embedder", "minilm-static"]) == 2
    assert "--clusters 500" in capsys.readouterr().err and not out.exists()

    members[0]["best_of"] = 3  # voting needs 3 samples per task; this world scored one
    save_fleet(bad, {"version": 1, "members": members})
    assert main(["fleet", "fit", "--fleet", str(bad), "--tasks", str(world.calib), "--out", str(out),
                 "--embedder", "minilm-static"]) == 2
    err = capsys.readouterr().err
    assert "'weather-small' has best_of 3" in err and "at most 1" in err and not out.exists()


def test_question_and_tools_text():
    msgs = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "first"},
            {"role": "assistant", "content": "?"}, {"role": "user", "content": [{"type": "text", "text": "rain in Oslo"}]}]
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "forecast"}},
             {"type": "function", "function": {"name": "geo"}}]
    assert question_text(msgs) == "rain in Oslo" and question_text(msgs[:2]) == "first" and question_text([]) == ""
    assert tools_text(tools) == "get_weather: forecast ; geo" and tools_text(None) == ""


def test_request_kind_features_separate_what_the_question_does_not(world, tmp_path):
    """Two requests with the same question, one offering its matching tool and one offering four unrelated tools,
    land in different clusters only thanks to the request-kind features."""
    out = tmp_path / "router"
    assert main(["fleet", "fit", "--fleet", str(world.fleet), "--tasks", str(world.calib), "--out", str(out),
                 "--embedder", "minilm-static", "--no-register"]) == 0
    router = load_router(out, fleet_members(world.fleet))
    q = [{"role": "user", "content": "Will it rain in Oslo over the coming 4 days?"}]
    unrelated = [{"type": "function", "function": {"name": f"stock_{i}", "description": "Share price of a company."}}
                 for i in range(4)]
    a, b = router.features([(q, [world.tasks["weather_0"]["tools"][0]]), (q, unrelated)])
    dims = router.centroids.shape[1]
    assert a.shape == b.shape == (dims,)
    assert np.allclose(a[:-8], b[:-8])  # the question's embedding is the same ...
    assert list(a[-8:-5]) == [1, 0, 0] and list(b[-8:-5]) == [0, 0, 1]  # ... the number of tools is not
    # and the question matches the weather tool better than stock prices: best and mean similarity to a tool, to its
    # parameters, and the share of its words in the tool's text ("weather" is in get_weather's)
    assert a[-5] > b[-5] and a[-4] > b[-4] and a[-3] > b[-3] and a[-2] > b[-2] == 0
    # neither tool's name ("weather", "stock") is a word of the question: the name cover sees words, not meaning
    assert a[-1] == b[-1] == 0


def test_name_cover_catches_a_tool_on_the_topic_that_answers_another_question():
    """BFCL's near-miss irrelevance requests: the offered tool is on the question's very topic (embedding similarity
    scores it a match), but its name asks for something the question does not."""
    assert name_words("thermodynamics.calculate_boiling_point") == ["thermodynamics", "boiling", "point"]
    assert name_words("calculateFinalPrice") == ["final", "price"]  # camelCase, without the generic verb
    assert name_words("get_info") == []
    freezing = _words("What is the freezing point of water at a pressure of 10 kPa?")
    boiling = _words("What is the boiling point of water at a pressure of 10 kPa?")
    assert name_cover(freezing, "thermodynamics.calculate_boiling_point") == pytest.approx(1 / 3)
    assert name_cover(boiling, "thermodynamics.calculate_boiling_point") == pytest.approx(2 / 3)
    # words compare on their first 5 characters: a plural or another ending still matches
    assert name_cover(_words("Area of these triangles?"), "calculate_triangle_area") == 1.0
    assert name_cover(freezing, "get_info") == 0.5  # a name with nothing specific says nothing either way


def test_logistic_regressions_keep_the_request_kind_features_audible_beside_the_embedding():
    """120 calibration tasks whose members' correctness follows one request-kind feature, beside 384 embedding
    dimensions that carry nothing: at full weight the regressions fit the embedding's noise (about 0.6 accuracy on new
    tasks), with the embedding scaled to 0.2 they find the feature (about 0.87)."""
    rng = np.random.default_rng(0)

    def draw(n):
        emb = rng.normal(size=(n, 384))
        kind = rng.normal(size=(n, STRUCTURE_DIMS))
        right = (kind[:, 0] + 0.3 * rng.normal(size=n) > 0).astype(float)
        return np.hstack([emb / np.linalg.norm(emb, axis=1, keepdims=True), kind]), np.c_[right, 1 - right]

    x, y = draw(120)
    new_x, new_y = draw(1000)
    seen = np.ones_like(y, dtype=bool)
    assert embedding_dims(x, structure_weight=1.0) == 384 and embedding_dims(x, structure_weight=0) == x.shape[1]

    def accuracy(arrays):
        return float(np.mean((predict_logistic(arrays, new_x)[:, 0] > 0.5) == (new_y[:, 0] > 0.5)))

    full, scaled = fit_logistic(x, y, seen, embedding=384), fit_logistic(x, y, seen, embedding=384, weight=0.2)
    assert accuracy(full) < 0.7 < 0.8 < accuracy(scaled)
    # the scaling lives in the stored scale, so a saved router predicts with it and nothing else
    assert np.allclose(scaled["lr_scale"][:384], full["lr_scale"][:384] / 0.2)
    assert np.allclose(scaled["lr_scale"][384:], full["lr_scale"][384:])
