"""The verifier on hostile model output, over real BFCL tasks: a verdict for any trace, within a time bound, that
can be written as UTF-8 JSON, with a short detail, and no output ever executed.

Three layers: a seeded generator of mutated real-format outputs (distill.testing.fuzz_outputs, thousands of cases
per run), hypothesis strategies (text from parser-breaking pieces, any text including lone surrogates, any Python
structure as `tool_calls`), and one explicit case per failure seen before (each crash class and each slow path of
the hardening issue, on `simple_python_0`: calculate_triangle_area(base: int, height: int, unit: str)).

The time bound is CPU seconds of this process, generous for a loaded 2-core machine: the inputs below took 14 to
90 s each before the parser was made linear, and take milliseconds now.
"""

from __future__ import annotations

import json
import time
import tracemalloc
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data_gen.bfcl import convert_entry
from distill.testing.fuzz_outputs import NASTY, fuzz_traces, load_fuzz_tasks
from eval import parse as parse_module
from eval import verify as verify_module
from eval.bfcl_data import bfcl_data_dir
from eval.parse import MAX_DETAIL_CHARS, MAX_OUTPUT_CHARS, render
from eval.tasks import task_from_dict
from eval.verify import ERRORS, INTERNAL_ERROR, verify

TIME_LIMIT_S = 1.0  # CPU seconds per input


def check(task, trace) -> dict:
    """verify() with every property the contract promises asserted; returns the verdict."""
    start = time.process_time()
    verdict = verify(task, trace)
    elapsed = time.process_time() - start
    json.dumps(verdict, ensure_ascii=False, allow_nan=False).encode("utf-8")  # raises if not writable
    assert elapsed < TIME_LIMIT_S, (elapsed, verdict)
    assert verdict["error"] in ERRORS or verdict["error"] == "ok"
    assert verdict["correct"] == (verdict["error"] == "ok")
    assert len(verdict["detail"]) <= MAX_DETAIL_CHARS
    assert INTERNAL_ERROR not in verdict["detail"], verdict  # the last-resort net must never be needed
    return verdict


def _bfcl_task(category: str, task_id: str):
    data = bfcl_data_dir()
    entry = next(e for e in map(json.loads, open(data / f"BFCL_v4_{category}.json")) if e["id"] == task_id)
    answer = None
    if "irrelevance" not in category:
        answer = next(a for a in map(json.loads, open(data / "possible_answer" / f"BFCL_v4_{category}.json")) if a["id"] == task_id)
    return task_from_dict(convert_entry(entry, answer, category, "test"))


@pytest.fixture(scope="module")
def fuzz_tasks():
    return load_fuzz_tasks(per_category=4)


@pytest.fixture(scope="module")
def triangle():
    return _bfcl_task("simple_python", "simple_python_0")


def _trace(**fields) -> dict:
    return {"task_id": "t", "model": "m", "sample": 0, **fields}


# --- the seeded generator ----------------------------------------------------------------------------------------


def test_seeded_mutations_of_real_outputs(fuzz_tasks, tmp_path):
    marker = tmp_path / "executed"
    kinds, errors = Counter(), Counter()
    for task, trace, kind in fuzz_traces(fuzz_tasks, n=15_000, seed=20261202, marker=str(marker)):
        errors[check(task, trace)["error"]] += 1
        kinds[kind] += 1
    assert not marker.exists(), "model output was executed"
    assert set(kinds) == {"text", "spliced", "openai", "canonical", "trace", "large"}
    # the mutations must reach past the parser, not only produce garbage it refuses
    assert errors["ok"] > 50 and errors["malformed"] > 1000, errors
    assert sum(errors[e] for e in ("schema_violation", "wrong_value", "wrong_count", "unknown_function")) > 200, errors


# --- hypothesis --------------------------------------------------------------------------------------------------

pieces = st.one_of(st.sampled_from(NASTY), st.text(max_size=4), st.sampled_from(['{"name": "calculate_triangle_area", "arguments": ', "calculate_triangle_area(base=", "10", "5", '"unit"']))
any_char = st.characters(exclude_categories=())  # lone surrogates included
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(any_char, max_size=10), st.binary(max_size=4),
    st.complex_numbers(), st.just(...), st.builds(pow, st.just(10), st.just(5000)), st.just(object()),
)
structures = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.tuples(inner, inner),
        st.dictionaries(st.one_of(st.text(any_char, max_size=6), st.integers(), st.none()), inner, max_size=4),
        st.fixed_dictionaries({"name": st.one_of(st.text(any_char, max_size=8), inner), "arguments": inner}),
        st.fixed_dictionaries({"type": st.just("function"), "function": inner}),
    ),
    max_leaves=12,
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.lists(pieces, max_size=25).map("".join))
def test_text_from_parser_breaking_pieces(triangle, raw):
    check(triangle, _trace(raw=raw))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.text(any_char, max_size=300))
def test_any_text(triangle, raw):
    check(triangle, _trace(raw=raw))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tool_calls=structures, model=leaves, sample=leaves)
def test_any_tool_calls_structure(triangle, tool_calls, model, sample):
    check(triangle, _trace(tool_calls=tool_calls, model=model, sample=sample))
    check(triangle, _trace(tool_calls=[tool_calls]))
    check(triangle, _trace(tool_calls=[{"name": "calculate_triangle_area", "arguments": tool_calls}]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(trace=structures)
def test_any_trace_object(triangle, trace):
    check(triangle, trace)


# --- each crash class of the hardening issue ---------------------------------------------------------------------

BIG = "1" * 5000
CALL = '{"name": "calculate_triangle_area", "arguments": %s}'
ARGS_BIG = '{"base": ' + BIG + ', "height": 5}'
CRASHES = {
    "5000-digit int, Hermes": _trace(raw="<tool_call>" + CALL % ARGS_BIG + "</tool_call>"),
    "5000-digit int, bare JSON": _trace(raw=CALL % ARGS_BIG),
    "5000-digit int, fenced": _trace(raw="```json\n" + CALL % ARGS_BIG + "\n```"),
    "5000-digit int, Mistral": _trace(raw="[TOOL_CALLS][" + CALL % ARGS_BIG + "]"),
    "5000-digit int, Mistral v11": _trace(raw="[TOOL_CALLS]calculate_triangle_area[ARGS]" + ARGS_BIG),
    "5000-digit int, Llama": _trace(raw="<|python_tag|>" + (CALL % ARGS_BIG).replace("arguments", "parameters")),
    "5000-digit int, OpenAI arguments": _trace(tool_calls=[{"type": "function", "function": {"name": "calculate_triangle_area", "arguments": ARGS_BIG}}]),
    "3600-digit hex literal, Python": _trace(raw="[calculate_triangle_area(base=0x%s, height=5)]" % ("f" * 3600)),
    "lone surrogate value": _trace(raw=CALL % '{"base": 10, "height": 5, "unit": "\\ud800"}'),
    "lone surrogate key": _trace(raw=CALL % '{"base": 10, "height": 5, "\\ud800": 1}'),
    "lone surrogate, Python literal": _trace(raw="[calculate_triangle_area(base=10, height=5, unit='\\udfff')]"),
    "lone surrogate, canonical tool_calls": _trace(tool_calls=[{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "unit": "\ud800"}}]),
    "3600-digit hex inside an expression": _trace(raw="[calculate_triangle_area(base=0x%s + 1, height=5)]" % ("f" * 3600)),
    "bytes literal": _trace(raw="[calculate_triangle_area(base=10, height=5, unit=b'x')]"),
    "complex literal": _trace(raw="[calculate_triangle_area(base=10, height=5, unit=1j)]"),
    "Ellipsis": _trace(raw="[calculate_triangle_area(base=10, height=5, unit=...)]"),
    "int dict key": _trace(raw="[calculate_triangle_area(base=10, height=5, unit={1: 2})]"),
    "g(**k)": _trace(raw="[calculate_triangle_area(base=10, height=5, unit=g(**k))]"),
    "set via the literal fallback": _trace(raw="{'name': 'calculate_triangle_area', 'arguments': {'base': {1, 2}, 'height': 5}}"),
    "bytes via the literal fallback": _trace(raw="{'name': 'calculate_triangle_area', 'arguments': {'base': b'x', 'height': 5}}"),
    "unhashable dict key": _trace(raw="[calculate_triangle_area(base=10, height=5, unit={[1]: 2})]"),
    "JSON 1000 deep in OpenAI arguments": _trace(tool_calls=[{"function": {"name": "calculate_triangle_area", "arguments": '{"base": ' + "[" * 1000 + "]" * 1000 + "}"}}]),
    "argument 256 deep": _trace(raw=CALL % ('{"base": 10, "height": 5, "unit": ' + "[" * 256 + "]" * 256 + "}")),
    "argument 256 deep, canonical": _trace(tool_calls=[{"name": "calculate_triangle_area", "arguments": {"base": json.loads("[" * 256 + "]" * 256)}}]),
    "tuple and set, canonical": _trace(tool_calls=[{"name": "calculate_triangle_area", "arguments": {"base": (1,), "height": {5}}}]),
    "NaN, canonical": _trace(tool_calls=[{"name": "calculate_triangle_area", "arguments": {"base": float("nan"), "height": 5}}]),
}


@pytest.mark.parametrize("name", list(CRASHES))
def test_crash_class_gives_a_verdict(triangle, name):
    verdict = check(triangle, CRASHES[name])
    assert verdict["error"] in ("malformed", "schema_violation"), verdict
    assert verdict["detail"]


def test_crash_class_inside_prose(triangle):
    # JSON inside prose that does not decode is prose: the search for a call moves past it
    verdict = check(triangle, _trace(raw="Here: " + CALL % ARGS_BIG + " and more"))
    assert verdict["error"] == "no_call"
    verdict = check(triangle, _trace(raw="Here: " + CALL % '{"base": 10, "height": 5, "unit": "\\ud800"}'))
    assert verdict["error"] == "malformed" and "surrogate" in verdict["detail"]


def test_309_digit_int_for_a_number_parameter():
    task = _bfcl_task("simple_python", "simple_python_31")  # calculate_final_velocity(acceleration: number, ...)
    for raw in ("[calculate_final_velocity(initial_velocity=0, acceleration=%s, time=5)]" % ("9" * 309),
                CALL.replace("calculate_triangle_area", "calculate_final_velocity") % ('{"initial_velocity": 0, "acceleration": %s, "time": 5}' % ("9" * 309))):
        verdict = check(task, _trace(raw=raw))
        assert verdict["error"] == "wrong_value" and "out of a float's range" in verdict["detail"], verdict


def test_lone_surrogate_function_name_on_an_irrelevance_task():
    task = _bfcl_task("irrelevance", "irrelevance_0")
    for trace in (_trace(raw='{"name": "\\ud800", "arguments": {}}'), _trace(tool_calls=[{"name": "\udfff", "arguments": {}}]),
                  _trace(raw="[f\udfff(a=1)]")):
        assert check(task, trace)["error"] == "malformed"


def test_trace_fields_json_cannot_carry_are_echoed_as_text(triangle):
    verdict = check(triangle, {"raw": "no call", "model": "m\ud800", "sample": 10**5000})
    assert verdict["model"] == "m\\ud800" and isinstance(verdict["sample"], str)


def test_an_unexpected_exception_still_gives_a_verdict(triangle, monkeypatch):
    def broken(*args):
        raise KeyError("a bug")

    monkeypatch.setattr(verify_module, "judge", broken)
    verdict = verify(triangle, _trace(raw="[calculate_triangle_area(base=10, height=5)]"))
    assert verdict["error"] == "malformed" and INTERNAL_ERROR in verdict["detail"]
    monkeypatch.undo()
    monkeypatch.setattr(parse_module, "_parse_text", broken)
    monkeypatch.setattr(parse_module, "_call_from_obj", broken)
    assert INTERNAL_ERROR in parse_module.parse_output("[f(a=1)]").detail
    assert INTERNAL_ERROR in parse_module.parse_output(None, [{"name": "f", "arguments": "{}"}]).detail


# --- each slow path of the hardening issue -----------------------------------------------------------------------

SLOW = {
    "<think> x 20,000": "<think>" * 20_000,
    "prose + ``` x 100,000": "Here you go. " + "```" * 100_000,
    "prose + { x 300,000": "Here you go. " + "{" * 300_000,
    'prose + {"a": x 150,000': "Here you go. " + '{"a": ' * 150_000,
    "prose + { to 10 MB": "Here you go. " + "{" * 10_000_000,
    "<|im_end|> x 300,000": "<|im_end|>" * 300_000,
    "<|im_end|> x 99,000 (under the cap)": "x" + "<|im_end|>" * 99_000,
    "<tool_call> x 90,000": "<tool_call>" * 90_000,
    "Hermes Python calls x 15,000": "<tool_call>calculate_triangle_area(base=1)</tool_call>" * 15_000,
    "[TOOL_CALLS]f[ARGS]{} x 40,000": "[TOOL_CALLS]f[ARGS]{}" * 40_000,
    "a 1 MB argument list": CALL % ('{"base": 10, "height": [' + "1," * 490_000 + "1]}"),
}


@pytest.mark.parametrize("name", list(SLOW))
def test_slow_path_is_fast(triangle, name):
    check(triangle, _trace(raw=SLOW[name]))


def test_10_mb_python_call_uses_little_memory(triangle):
    raw = "[calculate_triangle_area(base=10, height=5, unit=[" + "1," * 5_000_000 + "])]"
    tracemalloc.start()
    try:
        verdict = check(triangle, _trace(raw=raw))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert verdict["error"] == "malformed" and f"{MAX_OUTPUT_CHARS:,}" in verdict["detail"]
    assert peak < 20 * 2**20, peak  # the output is not copied, let alone parsed (it took 4.7 GB)


def test_a_100_kb_python_call_is_parsed_within_bounds(triangle):
    raw = "[calculate_triangle_area(base=10, height=5, unit=[" + "1," * 49_000 + "])]"
    assert check(triangle, _trace(raw=raw))["error"] == "schema_violation"


def test_huge_values_are_not_echoed(triangle):
    huge = "x" * 200_000_000
    verdict = check(triangle, _trace(tool_calls=[{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "unit": huge}}]))
    assert verdict["error"] == "malformed"
    del huge
    near_cap = "y" * (MAX_OUTPUT_CHARS - 1000)
    for trace in (_trace(raw=render([{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "unit": near_cap}}], "hermes")),
                  _trace(tool_calls=[{"name": "calculate_triangle_area", "arguments": {"base": 10, "height": 5, "unit": near_cap}}]),
                  _trace(tool_calls=[{"name": "calculate_triangle_area", "arguments": {"base": near_cap, "height": 5}}])):
        verdict = check(triangle, trace)
        assert verdict["error"] in ("wrong_value", "schema_violation") and "yyyy" in verdict["detail"]


def test_containers_of_millions_of_items_stop_at_the_size_cap(triangle):
    many_keys = dict.fromkeys(map(str, range(1_200_000)), 1)
    for arguments in (many_keys, {"base": [0] * 5_000_000}, {"base": ["x" * 1000] * 5000}):
        verdict = check(triangle, _trace(tool_calls=[{"name": "calculate_triangle_area", "arguments": arguments}]))
        assert verdict["error"] == "malformed" and f"{MAX_OUTPUT_CHARS:,}" in verdict["detail"], verdict


def test_a_trace_whose_methods_raise_still_gives_a_verdict(triangle):
    class Hostile(dict):
        def get(self, *args):
            raise RuntimeError("hostile get")

    verdict = verify(triangle, Hostile(raw="x"))
    assert verdict["error"] == "malformed" and verdict["correct"] is False
    json.dumps(verdict, ensure_ascii=False).encode("utf-8")
