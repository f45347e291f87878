"""The error taxonomy, schema checks and task loading on hand-written tasks."""

import json

import pytest

from eval.io import DistillError
from eval.tasks import load_tasks, task_from_dict
from eval.verify import ERRORS, verify

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}, "required": ["tz"]}}}


def _task(expected, tools=(WEATHER, TIME), tid="t0"):
    return task_from_dict(
        {"id": tid, "category": "test", "messages": [{"role": "user", "content": "q"}], "tools": list(tools), "expected": expected}
    )


PARIS = [{"name": "get_weather", "arguments": {"city": ["Paris", "Paris, France"], "unit": ["celsius", ""]}}]


def _v(task, raw):
    return verify(task, {"task_id": task.id, "model": "m", "sample": 0, "raw": raw})


@pytest.mark.parametrize(
    "expected, raw, correct, schema_valid, error",
    [
        (PARIS, '[get_weather(city="paris, france")]', True, True, "ok"),
        (PARIS, '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}</tool_call>', True, True, "ok"),
        (PARIS, '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"', False, False, "malformed"),
        (PARIS, "It is sunny in Paris.", False, True, "no_call"),
        ([], '[get_weather(city="Paris")]', False, True, "unexpected_call"),
        ([], "I can't tell the time.", True, True, "ok"),
        (PARIS, '[get_forecast(city="Paris")]', False, False, "unknown_function"),
        (PARIS, '[get_weather(unit="celsius")]', False, False, "schema_violation"),
        (PARIS, '[get_weather(city="Paris", unit="kelvin")]', False, False, "schema_violation"),
        (PARIS, '[get_weather(city="Paris", verbose=True)]', False, False, "schema_violation"),
        (PARIS, '[get_weather(city=75)]', False, False, "schema_violation"),
        (PARIS, '[get_time(tz="CET")]', False, True, "wrong_function"),
        (PARIS, '[get_weather(city="Paris"), get_weather(city="Paris")]', False, True, "wrong_count"),
        (PARIS, '[get_weather(city="London")]', False, True, "wrong_value"),
        (PARIS, '[get_weather(city="Paris", days=3)]', False, True, "wrong_value"),
        (PARIS, '[get_weather(city="Paris", unit="fahrenheit")]', False, True, "wrong_value"),
    ],
)
def test_error_taxonomy(expected, raw, correct, schema_valid, error):
    v = _v(_task(expected), raw)
    assert (v["correct"], v["schema_valid"], v["error"]) == (correct, schema_valid, error), v
    assert v["error"] in ERRORS or v["error"] == "ok"
    if not v["schema_valid"]:
        assert v["detail"], "a schema failure must say what failed"


def test_correct_but_schema_invalid_is_reported_in_detail():
    # BFCL's answers sometimes name values its own schema refuses; correct follows BFCL, schema_valid does not.
    expected = [{"name": "get_weather", "arguments": {"city": ["Paris"], "unit": ["kelvin"]}}]
    v = _v(_task(expected), '[get_weather(city="Paris", unit="kelvin")]')
    assert (v["correct"], v["schema_valid"], v["error"]) == (True, False, "ok")
    assert "kelvin" in v["detail"]


def test_parallel_calls_in_any_order():
    expected = [
        {"name": "get_weather", "arguments": {"city": ["Paris"]}},
        {"name": "get_time", "arguments": {"tz": ["CET"]}},
    ]
    task = _task(expected)
    assert _v(task, '[get_time(tz="cet"), get_weather(city="Paris")]')["correct"]
    assert _v(task, '[get_weather(city="Paris")]')["error"] == "wrong_count"
    assert _v(task, '[get_weather(city="Paris"), get_weather(city="Rome")]')["error"] == "wrong_function"


def test_trace_tool_calls_take_precedence_over_raw():
    task = _task(PARIS)
    trace = {"task_id": "t0", "model": "m", "raw": "garbage", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}
    assert verify(task, trace)["correct"]
    assert verify(task, {**trace, "tool_calls": None})["error"] == "malformed"
    assert verify(task, {**trace, "tool_calls": []})["error"] == "no_call"


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_invalid_tool_schema_names_file_line_task_and_place(tmp_path):
    good = {"id": "a", "messages": [{"role": "user", "content": "q"}], "tools": [WEATHER], "expected": []}
    bad_tool = json.loads(json.dumps(WEATHER))
    bad_tool["function"]["parameters"]["properties"]["days"]["type"] = "int"
    bad = {**good, "id": "b", "tools": [bad_tool]}
    with pytest.raises(DistillError) as e:
        load_tasks(_write(tmp_path / "tasks.jsonl", [good, bad]))
    msg = str(e.value)
    assert "tasks.jsonl:2" in msg and "'b'" in msg and "properties/days/type" in msg


@pytest.mark.parametrize(
    "mutate, fragment",
    [
        (lambda r: r.pop("tools"), "missing key 'tools'"),
        (lambda r: r.update(expected=[{"name": "nope", "arguments": {}}]), "'nope', which is not among"),
        (lambda r: r.update(expected=[{"name": "get_weather", "arguments": {"city": "Paris"}}]), "list of acceptable values"),
        (lambda r: r.update(messages=[]), "'messages' is empty"),
    ],
)
def test_bad_task_records(tmp_path, mutate, fragment):
    record = {"id": "a", "messages": [{"role": "user", "content": "q"}], "tools": [WEATHER], "expected": []}
    mutate(record)
    with pytest.raises(DistillError, match=fragment):
        load_tasks(_write(tmp_path / "t.jsonl", [record]))


def test_bad_json_line_and_duplicates(tmp_path):
    record = {"id": "a", "messages": [{"role": "user", "content": "q"}], "tools": [WEATHER], "expected": []}
    p = tmp_path / "t.jsonl"
    p.write_text(json.dumps(record) + "\n{not json\n")
    with pytest.raises(DistillError, match=r"t.jsonl:2: not valid JSON"):
        load_tasks(p)
    _write(p, [record, record])
    with pytest.raises(DistillError, match=r"t.jsonl:2: duplicate task id 'a'"):
        load_tasks(p)


def test_validators_are_compiled_once_per_distinct_schema():
    a, b = _task([], tid="a"), _task([], tid="b")
    assert a.specs["get_weather"].validator is b.specs["get_weather"].validator


GOOD_TASK = {"id": "a", "messages": [{"role": "user", "content": "q"}], "tools": [WEATHER], "expected": []}


@pytest.mark.parametrize(
    "line, fragment",
    [
        (b'{"id": "b", "x": ' + b"1" * 5000 + b"}", "4300 digits"),
        (b'{"id": "b", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}", "nested too deeply"),
        (bytes(range(128, 256)) + b"\x00\xff garbage", "not UTF-8"),
        (json.dumps({**GOOD_TASK, "id": "b", "x": "\ud800"}).encode(), "lone surrogate"),
        (json.dumps({**GOOD_TASK, "id": "b", "x": json.loads("[" * 100 + "]" * 100)}).encode(), "nested deeper than 64"),
    ],
    ids=["5000-digit number", "3000-deep nesting", "binary garbage", "lone surrogate", "100-deep nesting"],
)
def test_unreadable_task_lines_are_errors_naming_file_and_line(tmp_path, line, fragment):
    path = tmp_path / "t.jsonl"
    path.write_bytes(json.dumps(GOOD_TASK).encode() + b"\n" + line + b"\n")
    with pytest.raises(DistillError) as e:
        load_tasks(path)
    assert "t.jsonl:2" in str(e.value) and fragment in str(e.value)


def test_compiled_schema_cache_is_bounded(monkeypatch):
    """A long-lived server sees a new schema with every request: the cache keeps the most recently used ones."""
    from eval import schema

    monkeypatch.setattr(schema, "COMPILED_CACHE_SIZE", 8)
    monkeypatch.setattr(schema, "_COMPILED", type(schema._COMPILED)())
    first = {"type": "object", "properties": {"p0": {"type": "string"}}}
    schema._checked_and_compiled("t", first)
    for i in range(1, 20):
        schema._checked_and_compiled("t", {"type": "object", "properties": {f"p{i}": {"type": "string"}}})
        schema._checked_and_compiled("t", first)  # used again each time: stays
    assert len(schema._COMPILED) == 8
    assert schema.json.dumps(first, sort_keys=True, default=str) in schema._COMPILED
