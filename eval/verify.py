"""One verdict per trace: correct by BFCL's rules, schema-valid by JSON Schema, and why not (the error taxonomy).

    trace   {"task_id": "simple_python_12", "model": "m", "sample": 0, "raw": "[get_weather(city='Paris')]"}
    verdict {"task_id": "simple_python_12", "model": "m", "sample": 0, "correct": true, "schema_valid": true,
             "error": "ok", "detail": ""}

ERROR is the first that applies, in this order: malformed, no_call, unexpected_call, unknown_function,
schema_violation, wrong_function, wrong_count, wrong_value; `ok` when the answer is correct. The same function
filters the teacher's traces, labels rejected answers and scores the students.
"""

from __future__ import annotations

from eval import match as m
from eval.parse import CALLS, MALFORMED, Parsed, parse_output
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
    if "tool_calls" in trace:
        tc = trace["tool_calls"]
        if tc is None:
            return Parsed(MALFORMED, None, "text", "recorded as unparseable")
        if tc == []:
            return Parsed("no_call", [], "text", "recorded as no call")
        if isinstance(tc, list) and all(type(c) is dict and type(c.get("arguments")) is dict and type(c.get("name")) is str for c in tc):
            return Parsed(CALLS, tc, "openai", "")  # already canonical: skip re-normalising
        return parse_output(None, tc)
    return parse_output(trace.get("raw"))


def schema_problem(task: Task, calls: list[dict]) -> str | None:
    """Why the calls would be refused by the tools' schemas (unknown name, arguments failing the JSON Schema),
    or None when every call passes."""
    specs = task.specs
    for call in calls:
        spec = specs.get(call["name"])
        if spec is None:
            return f"unknown function {call['name']!r}"
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
        return False, schema_valid, "unexpected_call", _join(f"called {', '.join(c['name'] for c in calls)} where no call was expected", problem)
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
        return False, True, "wrong_function", _join(f"called {[c['name'] for c in calls]}, expected {[e.name for e in expected]}", detail)
    if len(calls) != len(expected):
        return False, True, "wrong_count", detail
    return False, True, "wrong_value", detail


def _all_expected_names(expected: list, calls: list[dict]) -> bool:
    names = {e.name for e in expected}
    return all(c["name"] in names for c in calls)


def _join(a: str, b: str | None) -> str:
    return f"{a}; {b}" if b else a


def verify(task: Task, trace: dict) -> dict:
    """The verdict for one trace (see the module docstring), with the task's category and whether the output
    parsed at all (`format_valid`)."""
    parsed = parse_trace(trace)
    correct, schema_valid, error, detail = judge(task, parsed)
    return {
        "task_id": task.id,
        "model": trace.get("model"),
        "sample": trace.get("sample", 0),
        "category": task.category,
        "correct": correct,
        "schema_valid": schema_valid,
        "format_valid": parsed.status != MALFORMED,
        "error": error,
        "detail": detail,
    }
