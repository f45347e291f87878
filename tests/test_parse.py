"""The output parser: every supported format round-trips, and no text makes it raise."""

import json
import keyword
import re
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eval.parse import (
    CALLS,
    FORMATS,
    MALFORMED,
    MAX_OUTPUT_CHARS,
    NO_CALL,
    _drop_think,
    _fenced_body,
    _strip_end_tokens,
    parse_output,
    render,
    short_repr,
)

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


# The linear rewrites of three regex passes must find what the regexes found (the regexes were quadratic on
# unclosed <think>, ``` without a newline and trailing end tokens).
_OLD_THINK = re.compile(r"<think>.*?</think>", re.S)
_OLD_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|$)", re.S)
_PIECES = ["<think>", "</think>", "```", "\n", " ", "x", "{", "<|im_end|>", "</s>", "<|eot_id|>", "json"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(_PIECES), max_size=12).map("".join))
def test_linear_scans_match_the_regexes_they_replace(text):
    assert _drop_think(text) == _OLD_THINK.sub("", text)
    m = _OLD_FENCE.search(text)
    body = _fenced_body(text)
    assert (m is None) == (body is None)
    if m is not None:
        assert body.strip() == m.group(2).strip()
    old = text.strip()
    changed = True
    while changed:
        changed = False
        for tok in ("<|eom_id|>", "<|eot_id|>", "<|im_end|>", "</s>", "<|end|>", "<end_of_turn>", "<|endoftext|>"):
            if old.endswith(tok):
                old, changed = old[: -len(tok)].rstrip(), True
    assert _strip_end_tokens(text) == old


def test_embedded_json_is_found_past_broken_and_non_call_json():
    p = parse_output('Use {braces} and [1, 2]; {"a": 1, oops} then {"name": "f", "arguments": {"x": "}"}} ok')
    assert p.calls == [{"name": "f", "arguments": {"x": "}"}}]
    p = parse_output('The result: {"data": {"name": "g", "parameters": {"y": 2}}}.')
    assert p.calls == [{"name": "g", "arguments": {"y": 2}}]
    p = parse_output('Two: [{"name": "a", "arguments": {}}, {"name": "b", "arguments": {}}] done')
    assert [c["name"] for c in p.calls] == ["a", "b"]
    assert parse_output('Just a dict {"name": "x"} without arguments').status == NO_CALL


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ("[f(a=b'x')]", "bytes"),
        ("[f(a=1j)]", "complex"),
        ("[f(a=...)]", "ellipsis"),
        ("[f(a={1: 2})]", "not a string"),
        ("[f(a={[1]: 2})]", "not a string"),
        ("[f(a=g(**k))]", "unpacking"),
        ("{'name': 'f', 'arguments': {'a': b'x'}}", "not valid JSON"),
        ('{"name": "f", "arguments": {"a": NaN}}', "nan"),
        ('{"name": "f", "arguments": {"a": "\\ud800"}}', "lone surrogate"),
        ('{"name": "f", "arguments": {"\\udfff": 1}}', "lone surrogate"),
        ('{"name": "f", "arguments": {"a": ' + "1" * 5000 + "}}", "4,300 digits"),
        ("[f(a=0x" + "f" * 3600 + ")]", "4,000 digits"),
        ('{"name": "f", "arguments": {"a": ' + "[" * 150 + "]" * 150 + "}}", "deeper than 100"),
        ("[f(a=" + "[" * 150 + "]" * 150 + ")]", "nested"),
        ("[" + "f(a=1), " * 1001 + "]", "more than 1,000 calls"),
    ],
)
def test_calls_json_cannot_carry_are_malformed_with_a_reason(raw, fragment):
    p = parse_output(raw)
    assert p.status == MALFORMED, p
    assert fragment in p.detail and len(p.detail) < 200


def test_output_past_the_size_cap_is_malformed_unread():
    p = parse_output("x" * (MAX_OUTPUT_CHARS + 1))
    assert p.status == MALFORMED and f"{MAX_OUTPUT_CHARS:,}" in p.detail
    assert parse_output("x" * MAX_OUTPUT_CHARS).status == NO_CALL


def test_short_repr_never_raises_and_stays_short():
    class Hostile:
        def __repr__(self):
            raise RuntimeError("no")

    for value in ("x" * 10**6, 10**5000, [[1] * 10**5], {"k": "v" * 10**5}, Hostile(), "\ud800" * 100):
        text = short_repr(value)
        assert len(text) <= 60
        text.encode("utf-8")


def test_more_embedded_calls_than_the_verifier_reads_is_malformed():
    calls = json.dumps([{"name": "f", "arguments": {}}] * 1001)
    assert parse_output("Here: " + calls).status == MALFORMED
    assert parse_output("Here: " + json.dumps([{"name": "f", "arguments": {}}] * 2)).status == CALLS
