"""The output parser: every supported format round-trips, and no text makes it raise."""

import json
import keyword
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from eval.parse import CALLS, FORMATS, MALFORMED, NO_CALL, parse_output, render

# JSON-representable argument values (no NaN/inf: JSON cannot carry them).
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**12), max_value=10**12),
    st.floats(allow_nan=False, allow_infinity=False, width=64),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=10,
)
identifier = st.from_regex(r"[a-z_][a-z0-9_]{0,10}", fullmatch=True).filter(lambda s: not keyword.iskeyword(s))
dotted_name = st.lists(identifier, min_size=1, max_size=3).map(".".join)
calls_strategy = st.lists(
    st.fixed_dictionaries({"name": dotted_name, "arguments": st.dictionaries(identifier, values, max_size=4)}),
    min_size=1,
    max_size=3,
)


def _parse_rendered(rendered, fmt):
    return parse_output(None, rendered) if fmt == "openai" else parse_output(rendered)


@settings(max_examples=150, deadline=None)
@given(calls=calls_strategy, fmt=st.sampled_from(FORMATS))
def test_render_then_parse_gives_the_same_calls(calls, fmt):
    parsed = _parse_rendered(render(calls, fmt), fmt)
    assert parsed.status == CALLS, (fmt, parsed)
    # JSON formats keep values exactly; compare through JSON so 1 == 1.0 does not hide a type change.
    assert json.dumps(parsed.calls, sort_keys=True) == json.dumps(calls, sort_keys=True)


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=200))
def test_random_text_never_raises(text):
    parsed = parse_output(text)
    assert parsed.status in (CALLS, NO_CALL, MALFORMED)
    assert (parsed.calls is None) == (parsed.status == MALFORMED)


@settings(max_examples=300, deadline=None)
@given(
    calls=calls_strategy,
    fmt=st.sampled_from([f for f in FORMATS if f != "openai"]),
    cut=st.floats(min_value=0, max_value=1),
    junk=st.text(alphabet=string.printable, max_size=5),
)
def test_mutated_output_never_raises(calls, fmt, cut, junk):
    text = render(calls, fmt)
    i = int(len(text) * cut)
    for mutated in (text[:i], text[:i] + junk + text[i:], text[i:], text.replace('"', "'", 1)):
        parsed = parse_output(mutated)
        assert parsed.status in (CALLS, NO_CALL, MALFORMED)
        if parsed.status == CALLS:
            assert all(isinstance(c["name"], str) and isinstance(c["arguments"], dict) for c in parsed.calls)


@given(tool_calls=st.one_of(st.none(), values, st.lists(values, max_size=3)))
def test_structured_tool_calls_never_raise(tool_calls):
    assert parse_output("", tool_calls).status in (CALLS, NO_CALL, MALFORMED)


def test_known_outputs():
    assert parse_output("Sure, the weather in Paris is mild today.").status == NO_CALL
    assert parse_output("").status == NO_CALL
    assert parse_output("[]").status == NO_CALL
    assert parse_output('<tool_call>{"name": "f", "arguments": {"a": 1}</tool_call>').status == MALFORMED
    assert parse_output("[f(1)]").status == MALFORMED  # positional arguments have no names to check
    assert parse_output('{"name": "f"').status == MALFORMED
    p = parse_output("<think>The user wants weather.</think>\n[get_weather(city='Paris', unit=celsius)]")
    assert p.calls == [{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}]
    p = parse_output('Here you go: {"name": "f", "parameters": {"a": 2}} hope it helps')
    assert p.calls == [{"name": "f", "arguments": {"a": 2}}]
    p = parse_output("{'name': 'f', 'arguments': {'flag': True, 'x': None}}")
    assert p.calls == [{"name": "f", "arguments": {"flag": True, "x": None}}]
    p = parse_output('<|python_tag|>{"name": "a", "parameters": {}}; {"name": "b", "parameters": {"x": 1}}<|eom_id|>')
    assert [c["name"] for c in p.calls] == ["a", "b"]
    p = parse_output('[TOOL_CALLS][{"name": "f", "arguments": {"x": [1, 2]}}]</s>')
    assert p.calls == [{"name": "f", "arguments": {"x": [1, 2]}}]
    p = parse_output(None, [{"type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}])
    assert p.calls == [{"name": "f", "arguments": {"a": 1}}] and p.format == "openai"
    assert parse_output(None, [{"function": {"name": "f", "arguments": "{bad"}}]).status == MALFORMED


def test_python_syntax_is_read_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    text = f"[f(a=__import__('pathlib').Path({str(marker)!r}).touch(), b=2**3, c=-1.5, d=(1, 2))]"
    p = parse_output(text)
    assert not marker.exists()
    assert p.status == CALLS
    args = p.calls[0]["arguments"]
    assert args["b"] == "2 ** 3" and args["c"] == -1.5 and args["d"] == [1, 2]
    assert isinstance(args["a"], str)
