"""A fleet whose members' strengths are known by construction, scored by the real verifier, for the router, cascade,
fleet eval and serving tests and benchmarks/route_speed.py.

    world = build_world(tmp_path)              # tasks, per-member traces + verdicts (distill score), fleet.yaml
    world.fleet, world.calib, world.heldout    # paths
    world.expected_strict("math-small", "math_3")

Three domains, each with its own tool and phrasings: weather (get_weather), math (calculate_area), flights
(book_flight). Each member has a known accuracy per domain; task i of a domain has a difficulty u in [0, 1) (a
hash, shared by all members: hard tasks are hard for everyone) and a member answers it right when u < its accuracy.
Wrong answers are of kinds the cascade can see (schema violations, malformed output, unknown functions) or cannot
(a schema-valid wrong value), chosen by hash. Extra samples (for best-of-k) draw their own difficulty, and wrong
ones differ from each other, so voting has something to do.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

TOOLS = {
    "weather": {"type": "function", "function": {
        "name": "get_weather", "description": "Weather forecast for a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                       "required": ["city", "days"], "additionalProperties": False}}},
    "math": {"type": "function", "function": {
        "name": "calculate_area", "description": "Area of a geometric shape.",
        "parameters": {"type": "object", "properties": {
            "shape": {"type": "string", "enum": ["circle", "square", "triangle", "hexagon"]},
            "size": {"type": "number"}}, "required": ["shape", "size"], "additionalProperties": False}}},
    "flights": {"type": "function", "function": {
        "name": "book_flight", "description": "Book a plane ticket.",
        "parameters": {"type": "object", "properties": {
            "origin": {"type": "string"}, "destination": {"type": "string"}, "date": {"type": "string"}},
            "required": ["origin", "destination", "date"], "additionalProperties": False}}},
}
CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Denver", "Hanoi", "Perth", "Quito", "Dublin", "Seoul", "Accra"]
SHAPES = ["circle", "square", "triangle", "hexagon"]
PHRASES = {
    "weather": ["What's the weather forecast in {c} for the next {n} days?", "Will it rain in {c} over the coming {n} days?",
                "Give me the {n}-day temperature and wind outlook for {c}.", "How sunny will {c} be this week, {n} days ahead?"],
    "math": ["Compute the area of a {s} with side or radius {x}.", "What is the surface area of a {s} of size {x}?",
             "Calculate the geometric area for a {s}, dimension {x} centimetres.", "Find the area enclosed by a {s} measuring {x}."],
    "flights": ["Book me a plane ticket from {a} to {b} on {d}.", "I need a flight from {a} to {b} departing {d}.",
                "Reserve an airline seat {a} to {b} for {d}.", "Please book air travel leaving {a} for {b} on {d}."],
}
DOMAINS = tuple(PHRASES)

# accuracy per domain, cost, admitted domains, samples per task
MEMBERS = {
    "weather-small": ({"weather": 0.95, "math": 0.15, "flights": 0.15}, 0.5, ["weather"]),
    "math-small": ({"weather": 0.15, "math": 0.95, "flights": 0.2}, 1.0, ["math"]),
    "flights-mid": ({"weather": 0.5, "math": 0.45, "flights": 0.9}, 3.0, ["flights"]),
    "teacher": ({"weather": 0.85, "math": 0.85, "flights": 0.85}, 20.0, ["weather", "math", "flights"]),
}


def unit(*parts) -> float:
    """A stable pseudo-random number in [0, 1) from its arguments."""
    h = hashlib.sha256("\0".join(map(str, parts)).encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def make_task(domain: str, i: int) -> dict:
    p = PHRASES[domain][i % 4]
    if domain == "weather":
        c, n = CITIES[i % len(CITIES)], 2 + i % 5
        q, args = p.format(c=c, n=n), {"city": [c], "days": [n]}
    elif domain == "math":
        s, x = SHAPES[i % 4], 1 + i % 9
        q, args = p.format(s=s, x=x), {"shape": [s], "size": [float(x)]}
    else:
        a, b, d = CITIES[i % len(CITIES)], CITIES[(i * 5 + 3) % len(CITIES)], f"2026-0{1 + i % 9}-1{i % 10}"
        q, args = p.format(a=a, b=b, d=d), {"origin": [a], "destination": [b], "date": [d]}
    name = TOOLS[domain]["function"]["name"]
    return {"id": f"{domain}_{i}", "category": domain, "messages": [{"role": "user", "content": q}],
            "tools": [TOOLS[domain]], "expected": [{"name": name, "arguments": args}]}


def right_call(task: dict) -> dict:
    e = task["expected"][0]
    return {"name": e["name"], "arguments": {k: v[0] for k, v in e["arguments"].items()}}


def error_kind(member: str, tid: str, sample: int) -> str:
    r = unit("kind", member, tid, sample)
    return "wrong_value" if r < 0.5 else "schema" if r < 0.75 else "malformed" if r < 0.9 else "unknown_function"


def answer(task: dict, member: str, sample: int, correct: bool) -> str:
    call = right_call(task)
    if not correct:
        kind = error_kind(member, task["id"], sample)
        first = next(iter(call["arguments"]))
        if kind == "wrong_value":  # schema-valid, so no gold-free check can see it; differs per sample
            v = call["arguments"][first]
            call["arguments"][first] = (v + 1 + sample) if isinstance(v, (int, float)) else f"{v}x{sample}"
            if task["category"] == "math" and first == "shape":
                call["arguments"]["shape"] = SHAPES[(SHAPES.index(v) + 1 + sample) % 4]
        elif kind == "schema":
            del call["arguments"][first]  # a required argument missing
        elif kind == "malformed":
            return '<tool_call>{"name": "' + call["name"] + '", "arguments": {</tool_call>'
        else:
            call["name"] = call["name"] + "_v2"
    return "<tool_call>" + json.dumps(call) + "</tool_call>"


def correct_by_construction(member: str, task: dict, sample: int = 0, members: dict | None = None) -> bool:
    acc = (members or MEMBERS)[member][0][task["category"]]
    u = unit("difficulty", task["id"]) if sample == 0 else unit("difficulty", task["id"], member, sample)
    return u < acc


@dataclass
class World:
    root: Path
    fleet: Path
    all_tasks: Path
    calib: Path
    heldout: Path
    tasks: dict  # id -> task record
    members: dict  # name -> (accuracy, cost, categories)

    def report_dir(self, member: str) -> Path:
        return self.root / "members" / member


def write_jsonl(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    return path


def build_world(root: Path, n_calib: int = 30, n_heldout: int = 30, samples: int = 1, members: dict | None = None,
                best_of: dict | None = None) -> World:
    """n_calib + n_heldout tasks per domain; every member scored on all of them by `eval.report.score_traces`."""
    from distill.fleet import save_fleet
    from eval.report import score_traces

    members = members or MEMBERS
    root = Path(root)
    calib = [make_task(d, i) for d in DOMAINS for i in range(n_calib)]
    held = [make_task(d, i) for d in DOMAINS for i in range(n_calib, n_calib + n_heldout)]
    all_path = write_jsonl(root / "all.jsonl", calib + held)
    calib_path = write_jsonl(root / "calib.jsonl", calib)
    held_path = write_jsonl(root / "heldout.jsonl", held)
    entries = []
    for name, (_, cost, cats) in members.items():
        folder = root / "members" / name
        traces = [{"task_id": t["id"], "model": name, "sample": s,
                   "raw": answer(t, name, s, correct_by_construction(name, t, s, members))}
                  for t in calib + held for s in range(samples)]
        write_jsonl(folder / "traces.jsonl", traces)
        score_traces(all_path, [folder / "traces.jsonl"], folder, model=name, plots=False)
        entry = {"name": name, "base_model": f"org/{name}", "adapter": None, "parameters": int(cost * 1e9),
                 "cost": cost, "cost_basis": "given", "categories": list(cats),
                 "report": f"members/{name}/report.json", "verdicts": f"members/{name}/verdicts.jsonl",
                 "tasks": "all.jsonl"}
        if best_of and name in best_of:
            entry["best_of"] = best_of[name]
        entries.append(entry)
    fleet = root / "fleet.yaml"
    save_fleet(fleet, {"version": 1, "members": entries})
    return World(root, fleet, all_path, calib_path, held_path, {t["id"]: t for t in calib + held}, dict(members))
