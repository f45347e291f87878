"""Synthetic hard negatives: corrupt a correct answer so that it fails the verifier with one intended error.

    correct  [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]
    drop_required_arg  -> [{"name": "get_weather", "arguments": {"unit": "celsius"}}]          schema_violation
    out_of_enum        -> [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "kelvin"}}]  schema_violation
    prose_instead      -> "I would use get_weather for this."                                     no_call

Each operator returns an Answer (calls, or raw text for malformed and prose answers) or None when it does not
apply to the task; `corrupt` keeps only answers the verifier rejects with the operator's intended error, so a
synthetic negative is never accidentally right and is always labelled truthfully.
"""

from __future__ import annotations

import copy
import json
import random
from collections.abc import Callable
from dataclasses import dataclass

from eval.parse import CALLS, NO_CALL, Parsed, parse_output, render
from eval.tasks import Task
from eval.verify import judge


@dataclass
class Answer:
    """One candidate answer: structured calls, or raw text (malformed or prose answers)."""

    calls: list[dict] | None
    text: str | None = None

    def parsed(self) -> Parsed:
        if self.calls is not None:
            return Parsed(CALLS if self.calls else NO_CALL, self.calls, "openai", "")
        return parse_output(self.text)


def _filler(schema: dict, rng: random.Random):
    """A value that satisfies a property schema (first enum value, or a plain value of its type)."""
    if not isinstance(schema, dict):
        return "example"
    if schema.get("enum"):
        return copy.deepcopy(schema["enum"][0])
    t = schema.get("type")
    if t == "integer":
        return rng.randint(1, 9)
    if t == "number":
        return float(rng.randint(1, 9)) + 0.5
    if t == "boolean":
        return True
    if t == "array":
        return [_filler(schema.get("items", {}), rng)]
    if t == "object":
        return {p: _filler(s, rng) for p, s in schema.get("properties", {}).items() if p in schema.get("required", [])}
    return "example"


def _wrong_type_value(schema: dict):
    t = schema.get("type") if isinstance(schema, dict) else None
    return {"string": 12345, "integer": "twelve", "number": "1.5 units", "boolean": "yes", "array": "a, b", "object": "key=value"}.get(t)


def _calls_with_args(answer_calls: list[dict], rng: random.Random):
    """(index, argument name) pairs present in the calls, shuffled."""
    spots = [(i, p) for i, c in enumerate(answer_calls) for p in c["arguments"]]
    rng.shuffle(spots)
    return spots


def drop_required_arg(task: Task, calls: list[dict], rng: random.Random) -> Answer | None:
    spots = [(i, p) for i, c in enumerate(calls) if c["name"] in task.specs for p in task.specs[c["name"]].required if p in c["arguments"]]
    if not spots:
        return None
    i, p = rng.choice(spots)
    out = copy.deepcopy(calls)
    del out[i]["arguments"][p]
    return Answer(out)


def wrong_type(task: Task, calls: list[dict], rng: random.Random) -> Answer | None:
    for i, p in _calls_with_args(calls, rng):
        spec = task.specs.get(calls[i]["name"])
        bad = _wrong_type_value(spec.properties.get(p, {})) if spec else None
        if bad is not None:
            out = copy.deepcopy(calls)
            out[i]["arguments"][p] = bad
            return Answer(out)
    return None


def out_of_enum(task: Task, calls: list[dict], rng: random.Random) -> Answer | None:
    for i, p in _calls_with_args(calls, rng):
        spec = task.specs.get(calls[i]["name"])
        enum = spec.properties.get(p, {}).get("enum") if spec else None
        if enum and all(isinstance(v, str) for v in enum):
            out = copy.deepcopy(calls)
            out[i]["arguments"][p] = f"{enum[0]}_other"
            return Answer(out)
    return None


def _other_value(value, schema: dict, rng: random.Random):
    enum = schema.get("enum") if isinstance(schema, dict) else None
    if enum:
        others = [v for v in enum if v != value]
        return copy.deepcopy(rng.choice(others)) if others else None
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + rng.choice([1, 2, 10, -1])
    if isinstance(value, float):
        return round(value * 2 + 1.0, 3)
    if isinstance(value, str):
        return rng.choice(["unknown", "default", "N/A", "example"]) if value else "unknown"
    if isinstance(value, list) and value:
        return value[:-1] if len(value) > 1 else value + value
    return None


def wrong_value(task: Task, calls: list[dict], rng: random.Random) -> Answer | None:
    for i, p in _calls_with_args(calls, rng):
        spec = task.specs.get(calls[i]["name"])
        new = _other_value(calls[i]["arguments"][p], spec.properties.get(p, {}) if spec else {}, rng)
        if new is not None:
            out = copy.deepcopy(calls)
            out[i]["arguments"][p] = new
            return Answer(out)
    return None


def hallucinated_function(task: Task, calls: list[dict], rng: random.Random) -> Answer | None:
    if not calls:
        return None
    i = rng.randrange(len(calls))
    out = copy.deepcopy(calls)
    base = out[i]["name"]
    name = next(n for n in (f"{base}_v2", f"{base}_advanced", f"fetch_{base}", f"{base}2") if n not in task.specs)
    out[i]["name"] = name
    return Answer(out)


def other_listed_function(task: Task, calls: list[dict], rng: random.Random) -> Answer | None:
    if not calls:
        return None
    i = rng.randrange(len(calls))
    others = [n for n in task.specs if n != calls[i]["name"] and n not in {e.name for e in task.matcher}]
    if not others:
        return None
    spec = task.specs[rng.choice(others)]
    args = {p: _filler(spec.properties.get(p, {}), rng) for p in spec.required}
    out = copy.deepcopy(calls)
    out[i] = {"name": spec.name, "arguments": args}
    return Answer(out)


def missing_parallel_call(task: Task, calls: list[dict], rng: random.Random) -> Answer | None:
    if len(calls) < 2:
        return None
    out = copy.deepcopy(calls)
    out.pop(rng.randrange(len(out)))
    return Answer(out)


def extra_parallel_call(task: Task, calls: list[dict], rng: random.Random) -> Answer | None:
    if not calls:
        return None
    out = copy.deepcopy(calls)
    out.append(copy.deepcopy(rng.choice(calls)))
    return Answer(out)


def malformed_json(task: Task, calls: list[dict], rng: random.Random) -> Answer | None:
    if not calls:
        return None
    text = render(calls, "hermes")
    cut = text.rfind("}", 0, text.rfind("}"))  # drop the arguments' closing brace: unbalanced JSON
    return Answer(None, text[:cut] + text[cut + 1 :] if cut > 0 else text[:-3])


def prose_instead(task: Task, calls: list[dict], rng: random.Random) -> Answer | None:
    if not calls:
        return None
    names = ", ".join(dict.fromkeys(c["name"] for c in calls))
    return Answer(None, f"To do this I would use {names} with the details you gave. Let me know if you want me to go ahead.")


def call_on_irrelevance(task: Task, calls: list[dict], rng: random.Random) -> Answer | None:
    if task.expected or not task.specs:
        return None
    spec = task.specs[rng.choice(list(task.specs))]
    return Answer([{"name": spec.name, "arguments": {p: _filler(spec.properties.get(p, {}), rng) for p in spec.required}}])


# operator -> the error the verifier must give its output
OPERATORS: dict[str, tuple[Callable, str]] = {
    "drop_required_arg": (drop_required_arg, "schema_violation"),
    "wrong_type": (wrong_type, "schema_violation"),
    "out_of_enum": (out_of_enum, "schema_violation"),
    "wrong_value": (wrong_value, "wrong_value"),
    "hallucinated_function": (hallucinated_function, "unknown_function"),
    "other_listed_function": (other_listed_function, "wrong_function"),
    "missing_parallel_call": (missing_parallel_call, "wrong_count"),
    "extra_parallel_call": (extra_parallel_call, "wrong_count"),
    "malformed_json": (malformed_json, "malformed"),
    "prose_instead": (prose_instead, "no_call"),
    "call_on_irrelevance": (call_on_irrelevance, "unexpected_call"),
}


def corrupt(task: Task, calls: list[dict], operator: str, rng: random.Random) -> tuple[Answer, str, str] | None:
    """Apply one operator to a correct answer; (answer, error, detail) when the verifier rejects the result
    with the operator's intended error, else None."""
    fn, intended = OPERATORS[operator]
    answer = fn(task, calls, rng)
    if answer is None:
        return None
    correct, _, error, detail = judge(task, answer.parsed())
    if correct or error != intended:
        return None
    return answer, error, detail


def synthetic_negatives(task: Task, calls: list[dict], k: int, rng: random.Random) -> list[tuple[str, Answer, str, str]]:
    """Up to k distinct negatives for one task, one operator each, operators in random order:
    [(operator, answer, error, detail)]."""
    ops = list(OPERATORS)
    rng.shuffle(ops)
    out, seen = [], set()
    for op in ops:
        if len(out) >= k:
            break
        made = corrupt(task, calls, op, rng)
        if made is None:
            continue
        answer, error, detail = made
        key = json.dumps(answer.calls, sort_keys=True) if answer.calls is not None else answer.text
        if key in seen:
            continue
        seen.add(key)
        out.append((op, answer, error, detail))
    return out
