"""One verdict per trace: correct by BFCL's rules, schema-valid by JSON Schema, and why not (the error taxonomy).

    trace   {"task_id": "simple_python_12", "model": "m", "sample": 0, "raw": "[get_weather(city='Paris')]"}
    verdict {"task_id": "simple_python_12", "model": "m", "sample": 0, "correct": true, "schema_valid": true,
             "error": "ok", "detail": ""}

ERROR is the first that applies, in this order: malformed, no_call, unexpected_call, unknown_function,
schema_violation, wrong_function, wrong_count, wrong_value; `ok` when the answer is correct. The same function
filters the teacher's traces, labels rejected answers and scores the students.

Model output is untrusted: `verify` returns a verdict for any trace (any text, any `tool_calls` structure, even a
trace that is not a dict) and never raises; what the parser cannot represent as JSON is `malformed` (see
eval/parse.py for the limits); the detail is at most MAX_DETAIL_CHARS characters, and every verdict can be
written as UTF-8 JSON.
"""

from __future__ import annotations

import math

from eval import match as m
from eval.parse import (
    CALLS,
    INTERNAL_ERROR,
    MALFORMED,
    MAX_DETAIL_CHARS,
    NOT_CANONICAL,
    Parsed,
    calls_problem,
    clip,
    parse_output,
    parse_tool_calls,
    short_repr,
)
from eval.tasks import Task

ERRORS = (
    "malformed",
    "no_call",
    "unexpected_call",
    "unknown_function",
    "schema_violation",
    "wrong_function",
    "wrong_count",
    "wrong_value",
)
OK = "ok"

# BFCL failure kinds that are schema problems (a real API would refuse the call) rather than wrong answers.
_SCHEMA_KINDS = {m.MISSING_REQUIRED, m.TYPE_ERROR, m.UNKNOWN_PARAM}


def parse_trace(trace: dict) -> Parsed:
    """The calls of a trace: its `tool_calls` when present (null = malformed, [] = no call), else its `raw`."""
    if not isinstance(trace, dict):
        return Parsed(MALFORMED, None, "text", f"a trace must be an object, got {type(trace).__name__}")
    if "tool_calls" in trace:
        tc = trace["tool_calls"]
        if tc is None:
            return Parsed(MALFORMED, None, "text", "recorded as unparseable")
        if type(tc) is list and not tc:
            return Parsed("no_call", [], "text", "recorded as no call")
        # already canonical calls skip re-normalising, but are checked to hold only what JSON can carry
        problem = calls_problem(tc)
        if problem is None:
            return Parsed(CALLS, tc, "openai", "")
        if problem is NOT_CANONICAL:
            return parse_tool_calls(tc)
        return Parsed(MALFORMED, None, "openai", problem)
    return parse_output(trace.get("raw"))


def schema_problem(task: Task, calls: list[dict]) -> str | None:
    """Why the calls would be refused by the tools' schemas (unknown name, arguments failing the JSON Schema),
    or None when every call passes."""
    specs = task.specs
    for call in calls:
        spec = specs.get(call["name"])
        if spec is None:
            return f"unknown function {short_repr(call['name'])}"
        err = spec.validate(call["arguments"])
        if err is not None:
            return f"{call['name']}: {err}"
    return None


def _is_wrong_function(expected: list, calls: list[dict]) -> bool:
    names = [e.name for e in expected]
    called = [c["name"] for c in calls]
    if any(n not in names for n in called):
        return True
    return len(called) == len(names) and sorted(called) != sorted(names)


def judge(task: Task, parsed: Parsed) -> tuple[bool, bool, str, str]:
    """(correct, schema_valid, error, detail) for one parsed answer to one task."""
    expected = task.matcher
    if parsed.status == MALFORMED:
        # Deliberate difference from BFCL: BFCL counts an undecodable answer to an irrelevance task as a correct
        # abstention; a broken attempt at a call is not an abstention, so it is wrong here for every task.
        return False, False, "malformed", parsed.detail
    calls = parsed.calls or []
    problem = schema_problem(task, calls) if calls else None
    schema_valid = problem is None
    if not calls:
        if not expected:
            return True, True, OK, ""
        return False, True, "no_call", parsed.detail or "answered without a call"
    if not expected:
        return False, schema_valid, "unexpected_call", _join(f"called {_names(calls)} where no call was expected", problem)
    kind, detail = m.match_calls(expected, calls)
    if kind == m.OK:
        return True, schema_valid, OK, "" if schema_valid else f"correct by BFCL's rules, but: {problem}"
    if any(c["name"] not in task.specs for c in calls):
        return False, False, "unknown_function", problem
    if not schema_valid:
        return False, False, "schema_violation", problem
    if kind in _SCHEMA_KINDS and _all_expected_names(expected, calls):
        return False, True, "schema_violation", detail
    if _is_wrong_function(expected, calls):
        return False, True, "wrong_function", _join(f"called [{_names(calls)}], expected {[e.name for e in expected]}", detail)
    if len(calls) != len(expected):
        return False, True, "wrong_count", detail
    return False, True, "wrong_value", detail


def _all_expected_names(expected: list, calls: list[dict]) -> bool:
    names = {e.name for e in expected}
    return all(c["name"] in names for c in calls)


def _join(a: str, b: str | None) -> str:
    return f"{a}; {b}" if b else a


def _names(calls: list[dict], shown: int = 5) -> str:
    names = ", ".join(short_repr(c["name"], 40) for c in calls[:shown])
    return names if len(calls) <= shown else f"{names} and {len(calls) - shown:,} more"


_BIG = 10**100  # an echoed integer past this is shown as text (JSON writers refuse those past 4,300 digits)


def _echo(value):
    """A trace's identifying field (model, sample) as the verdict can store it: JSON scalars as they are, anything
    else (or a string UTF-8 cannot store) as a short repr."""
    t = type(value)
    if isinstance(value, str):
        return clip(value[:2000], 1000)  # a slice is a plain str, also of a str subclass
    if value is None or t is bool or (t is float and math.isfinite(value)) or (t is int and -_BIG < value < _BIG):
        return value
    return short_repr(value, 100)


def verify(task: Task, trace: dict) -> dict:
    """The verdict for one trace (see the module docstring), with the task's category and whether the output
    parsed at all (`format_valid`). Never raises."""
    try:
        parsed = parse_trace(trace)
        correct, schema_valid, error, detail = judge(task, parsed)
        format_valid = parsed.status != MALFORMED
        model, sample = (trace.get("model"), trace.get("sample", 0)) if isinstance(trace, dict) else (None, 0)
        if not (type(model) is str and len(model) <= 1000 and model.isascii()):
            model = _echo(model)
        if not (type(sample) is int and -_BIG < sample < _BIG):
            sample = _echo(sample)
    except Exception as e:  # a last resort, never expected: the fuzz tests assert this detail never appears
        correct, schema_valid, error, format_valid, model, sample = False, False, "malformed", False, None, 0
        detail = f"{INTERNAL_ERROR}: {type(e).__name__}"
    return {
        "task_id": task.id,
        "model": model,
        "sample": sample,
        "category": task.category,
        "correct": correct,
        "schema_valid": schema_valid,
        "format_valid": format_valid,
        "error": error,
        "detail": detail if not detail or (len(detail) <= MAX_DETAIL_CHARS and detail.isascii()) else clip(detail),
    }

