"""A fleet with built-in strengths on real BFCL tasks, for the router's relevance decision (does any offered tool
fit the question?) and the cascade's abstention policy: tests/test_fleet_relevance.py and benchmarks.

    world = build_strengths_world(tmp_path)      # needs bfcl-eval (`pip install --no-deps bfcl-eval`)
    world.fleet, world.calib, world.heldout       # fleet.yaml (admitted by `distill fleet admit`), task files
    world.verdicts("caller")                      # the member's held-out verdicts, for `fleet eval --verdicts`

Tasks: BFCL simple_python, multiple and irrelevance; per category a seeded draw of `heldout_per_category` held-out
tasks and, from the rest, `calib_per_category` calibration tasks. Members, each answer scored by the real verifier:

    abstainer   cost 0.1  never calls: right on irrelevance, `no_call` on every other task
    caller      cost 0.5  the expected call on every call task; on irrelevance it calls the first tool anyway, with
                          schema-valid arguments (wrong, and invisible to a check without the gold answer)
    generalist  cost 2.0  right on 4 tasks in 5 of each category (every fifth, in draw order, is wrong); wrong
                          answers: no call or a schema-valid wrong value on call tasks, a call on irrelevance

Each member is admitted by `distill.fleet.admission.admit` from its calibration report with the default thresholds,
so `categories` and `abstains` come from the real rules (the abstainer is admitted for abstention on irrelevance and
nothing else; the generalist on irrelevance too; the caller nowhere).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass
from pathlib import Path

CATEGORIES = ("simple_python", "multiple", "irrelevance")
MEMBERS = {"abstainer": 0.1, "caller": 0.5, "generalist": 2.0}  # name -> cost per request
ABSTAIN_TEXT = "None of the offered functions can answer this request."


@dataclass
class StrengthsWorld:
    root: Path
    fleet: Path
    calib: Path
    heldout: Path
    tasks: dict  # id -> task record (calibration and held-out)

    def verdicts(self, member: str) -> Path:
        return self.root / "members" / member / "heldout" / "verdicts.jsonl"

    def verdict_overrides(self) -> list[str]:
        """`fleet eval --verdicts` values pointing every member at its held-out verdicts."""
        return [f"{m}={self.verdicts(m)}" for m in MEMBERS]


def _unit(*parts) -> float:
    h = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def _tool(task: dict, name: str) -> dict:
    return next(t["function"] for t in task["tools"] if t["function"]["name"] == name)


def expected_call(task: dict) -> dict:
    """The first acceptable value of each argument ("" means the argument may be left out: it is)."""
    e = task["expected"][0]
    args = {}
    for k, values in e["arguments"].items():
        v = next((v for v in values if v != ""), None)
        if v is not None:
            args[k] = v
    return {"name": e["name"], "arguments": args}


def _value(schema: dict):
    if not isinstance(schema, dict):
        return "example"
    if schema.get("enum"):
        return schema["enum"][0]
    return {"integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}.get(schema.get("type"), "example")


def some_call(task: dict) -> dict:
    """A call of the first offered tool with its required arguments filled in by type: schema-valid, unasked for."""
    fn = task["tools"][0]["function"]
    params = fn.get("parameters") or {}
    props = params.get("properties") or {}
    return {"name": fn["name"], "arguments": {k: _value(props.get(k)) for k in params.get("required", [])}}


def wrong_value(task: dict) -> dict | None:
    """The expected call with its first argument changed to another value of the same type (None when it has none)."""
    call = expected_call(task)
    props = (_tool(task, call["name"]).get("parameters") or {}).get("properties") or {}
    for k, v in call["arguments"].items():
        schema = props.get(k) or {}
        if schema.get("enum"):
            others = [x for x in schema["enum"] if x != v]
            if others:
                call["arguments"][k] = others[0]
                return call
            continue
        if isinstance(v, bool):
            continue
        if isinstance(v, (int, float)):
            call["arguments"][k] = v + 7
            return call
        if isinstance(v, str):
            call["arguments"][k] = v + " (other)"
            return call
    return None


def hermes(call: dict) -> str:
    return "<tool_call>\n" + json.dumps(call) + "\n</tool_call>"


def answer(member: str, task: dict, position: int) -> str:
    """What `member` answers to `task`, the `position`-th task of its category in draw order."""
    relevant = bool(task["expected"])
    if member == "abstainer":
        return ABSTAIN_TEXT
    if member == "caller":
        return hermes(expected_call(task) if relevant else some_call(task))
    right = position % 5 != 4
    if not relevant:
        return ABSTAIN_TEXT if right else hermes(some_call(task))
    if right:
        return hermes(expected_call(task))
    wrong = wrong_value(task) if _unit("kind", task["id"]) < 0.5 else None
    return hermes(wrong) if wrong else ABSTAIN_TEXT


def _write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def build_strengths_world(root: str | Path, calib_per_category: int = 80, heldout_per_category: int = 40,
                          seed: int = 0) -> StrengthsWorld:
    from data_gen.bfcl import import_bfcl
    from distill.fleet.admission import Thresholds, admit
    from eval.report import score_traces

    root = Path(root)
    by_cat: dict[str, list[dict]] = {c: [] for c in CATEGORIES}
    for t in import_bfcl(list(CATEGORIES)):
        by_cat[t["category"]].append(t)
    rng = random.Random(seed)
    calib, held, position = [], [], {}
    for cat in CATEGORIES:
        rows = sorted(by_cat[cat], key=lambda r: r["id"])
        rng.shuffle(rows)
        held += rows[:heldout_per_category]
        calib += rows[heldout_per_category: heldout_per_category + calib_per_category]
        position.update({r["id"]: i for i, r in enumerate(rows)})
    calib_path = _write_jsonl(root / "calib.jsonl", calib)
    held_path = _write_jsonl(root / "heldout.jsonl", held)
    fleet = root / "fleet.yaml"
    for name, cost in MEMBERS.items():
        for split, tasks, path in (("calib", calib, calib_path), ("heldout", held, held_path)):
            folder = root / "members" / name / split
            traces = [{"task_id": t["id"], "model": name, "sample": 0, "raw": answer(name, t, position[t["id"]])}
                      for t in tasks]
            _write_jsonl(folder / "traces.jsonl", traces)
            score_traces(path, [folder / "traces.jsonl"], folder, model=name, plots=False)
        admit(root / "members" / name / "calib", fleet, Thresholds(), name=name, cost=cost, parameters=int(cost * 1e9))
    return StrengthsWorld(root, fleet, calib_path, held_path, {t["id"]: t for t in calib + held})
