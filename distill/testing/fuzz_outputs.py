"""Hostile model outputs for the verifier: real BFCL tasks and answers, rendered in every format distill parses,
then mutated with the pieces that broke or stalled parsers before (huge integers, lone surrogates, Python literals
JSON cannot carry, deep nesting, repeated tags, garbage types in structured `tool_calls`).

    from distill.testing.fuzz_outputs import load_fuzz_tasks, fuzz_traces
    tasks = load_fuzz_tasks(per_category=4)
    for task, trace, kind in fuzz_traces(tasks, n=10_000, seed=0, marker="/tmp/x/executed"):
        verdict = verify(task, trace)   # must never raise, must stay fast, must be writable as UTF-8 JSON

Seeded and deterministic (one `random.Random(seed)`), so a failing input can be regenerated from (seed, index).
Some mutations embed Python code that would create the file `marker` if anything ever evaluated model output;
callers assert that it does not exist afterwards. Used by tests/test_verify_fuzz.py and benchmarks/verify_fuzz.py.
"""

from __future__ import annotations

import copy
import json
import random
from collections import OrderedDict
from collections.abc import Iterator
from decimal import Decimal

from eval.bfcl_data import bfcl_data_dir
from eval.bfcl_reference import perturbed_cases
from eval.parse import FORMATS, MAX_OUTPUT_CHARS, render
from eval.tasks import Task, task_from_dict

CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance", "live_simple",
              "live_multiple", "live_parallel", "live_parallel_multiple", "live_irrelevance")
TEXT_FORMATS = tuple(f for f in FORMATS if f != "openai")
KINDS = ("text", "text", "text", "openai", "canonical", "trace")  # text formats are drawn most often

# Text that broke, stalled or confused parsers: tags of every format, JSON and Python syntax, literals JSON cannot
# carry, numbers past Python's limits, escapes of lone surrogates and the raw characters themselves.
NASTY = (
    "<tool_call>", "</tool_call>", "[TOOL_CALLS]", "[ARGS]", "<|python_tag|>", "<think>", "</think>", "```",
    "```json\n", "{", "}", "[", "]", '"', "'", "\\", '\\"', "\\u", "\\ud800", "\\udfff", "\ud800", "\udfff", ":",
    ",", ";", "(", ")", "=", "**k", "*", "NaN", "Infinity", "-Infinity", "1e999", "1" * 5000, "0x" + "f" * 3600,
    "9" * 309, "b'x'", "1j", "...", "{1: 2}", "{[1]: 2}", "{(1,): 2}", "{1, 2}", "g(**k)", "lambda: 0", "-0",
    "1e-400", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "</s>", "\x00", "\n", "\t", " ", "null", "true", "None",
    "True", '"name"', '"arguments"', '"parameters"', '"function"', '"tool_calls"', "[" * 300, '{"a":' * 300,
    "\u202e", "\ufeff", "\uffff", "\U0010ffff", "\U0001f600", "é",
)
# Values spliced in place of one argument: Python expressions for Python call syntax, JSON for the rest.
HOSTILE_PYTHON = (
    "0x" + "f" * 3600, "0x" + "f" * 3600 + " + 1", "x(0x" + "f" * 3600 + ")", "1" * 5000, "9" * 309, "1e999",
    "-1e999", "b'x'", "1j", "1 + 2j", "...", "{1: 2}", "{[1]: 2}", "{(1,): 2}", "{1, 2}", "set()", "g(**k)",
    "{**k}", "[*x]", "lambda: 0", "f'{x}'", "x if y else z", "a.b.c", "x[0]", "-x", "not x", "'\\ud800'",
    "'\\udfff'", "None", "True", "(1,)", "()", "[" * 150 + "]" * 150, "(" * 150 + "1" + ")" * 150,
    "x." * 2000 + "x", "-" * 5000 + "1", "x + " * 3000 + "x", "(yield)", "await x", "[x for x in y]", "(x := 1)",
    "f(a=1)(b=2)", "'" + "a" * 50_000 + "'", "{'a': [1, {'b': None}]}", "1_000", "0b101", "0o17", "1e-400",
)
HOSTILE_JSON = (
    "1" * 5000, "9" * 309, "1e999", "-1e999", "NaN", "Infinity", '"\\ud800"', '"\\udfff"', '{"\\ud800": 1}',
    "[" * 1000 + "]" * 1000, "[" * 150 + "]" * 150, '{"a":' * 150 + "1" + "}" * 150, "null", "true", '""', "{}",
    "[]", '"' + "a" * 50_000 + '"', "0.1e-400", "-0", "1.5e308", "[" + ",".join(["1"] * 20_000) + "]",
    '"</tool_call><tool_call>"', '"[TOOL_CALLS]"', "'single'", "01", "1.", ".5", "+1", '"\\x41"', '"\t"',
)
_PLACEHOLDER = "__fuzz_value__"
PROSE = ("Sure, here is the call: ", "I'll use the tool.\n", "<think>Let me think.</think>", "Answer:\n", "")


class _Hostile:
    """A value whose repr, comparisons and hash all raise: nothing may depend on them."""

    def __repr__(self):
        raise RuntimeError("hostile __repr__")

    def __eq__(self, other):
        raise RuntimeError("hostile __eq__")

    __hash__ = None


class _Str(str):
    pass


def _deep(depth: int, leaf=1, as_dict: bool = False):
    value = leaf
    for _ in range(depth):  # built iteratively: the generator itself must not hit the recursion limit
        value = {"a": value} if as_dict else [value]
    return value


def _cycle():
    x: list = [1]
    x.append(x)
    return x


def _garbage_value(rng: random.Random):
    """A Python value for structured tool_calls: JSON's types at their limits, and types JSON cannot carry."""
    makers = (
        lambda: None, lambda: True, lambda: 0, lambda: -1, lambda: 10**5000, lambda: 2**64, lambda: 10**400,
        lambda: 1e308, lambda: float("nan"), lambda: float("inf"), lambda: -0.0, lambda: "", lambda: "\ud800",
        lambda: "x" * rng.choice((10, 1000, 100_000)), lambda: b"x", lambda: bytearray(b"x"), lambda: 1j,
        lambda: ..., lambda: (1, 2), lambda: {1, 2}, lambda: frozenset(), lambda: object(), lambda: _Hostile(),
        lambda: _cycle(), lambda: _deep(rng.choice((99, 100, 101, 256, 1000))), lambda: _deep(300, as_dict=True),
        lambda: {1: 2}, lambda: {None: 1}, lambda: {(1,): 2}, lambda: {"\ud800": 1}, lambda: {"a": _Hostile()},
        lambda: [_Hostile()], lambda: _Str("s"), lambda: OrderedDict(a=1), lambda: Decimal("1.5"),
        lambda: (i for i in range(3)), lambda: len, lambda: int, lambda: [1] * 1000, lambda: {"k": [{"x": "y"}] * 50},
    )
    return rng.choice(makers)()


def _json_garbage(rng: random.Random):
    """A value json.dumps can write (render() needs that), at the edges of what parsers accept."""
    makers = (
        lambda: "\ud800", lambda: "\udfff x", lambda: "x" * rng.choice((10, 1000, 50_000)), lambda: 10**4200,
        lambda: -(10**4000), lambda: 10**309, lambda: 1e308, lambda: float("nan"), lambda: float("-inf"),
        lambda: _deep(rng.choice((50, 99, 100, 101, 255, 256, 900))), lambda: _deep(200, as_dict=True),
        lambda: {"\ud800": 1}, lambda: "</tool_call>[TOOL_CALLS]<|python_tag|>```", lambda: [[]] * 100,
        lambda: {"name": "f", "arguments": {}}, lambda: None, lambda: "", lambda: '"\\',
    )
    return rng.choice(makers)()


def load_fuzz_tasks(per_category: int = 4, categories: tuple[str, ...] = CATEGORIES) -> list[tuple[Task, list[list[dict]]]]:
    """(task, answers) for `per_category` BFCL entries of each category, spread over its file: answers are
    BFCL's correct calls and typical mistakes (eval.bfcl_reference.perturbed_cases), [] included."""
    from data_gen.bfcl import convert_entry

    data = bfcl_data_dir()
    out = []
    for category in categories:
        with open(data / f"BFCL_v4_{category}.json", encoding="utf-8") as f:
            entries = [json.loads(line) for line in f if line.strip()]
        answers = {}
        if "irrelevance" not in category:
            with open(data / "possible_answer" / f"BFCL_v4_{category}.json", encoding="utf-8") as f:
                answers = {a["id"]: a for a in map(json.loads, f)}
        step = max(1, len(entries) // per_category)
        for entry in entries[::step][:per_category]:
            answer = answers.get(entry["id"])
            task = task_from_dict(convert_entry(entry, answer, category, "fuzz"))
            calls = [case.calls for case in perturbed_cases(entry, answer)]
            if not any(calls):  # irrelevance: no answer to perturb, so call the first tool
                calls.append([{"name": task.tools[0]["function"]["name"], "arguments": {}}])
            out.append((task, calls))
    return out


def _mutate_text(text: str, rng: random.Random, marker: str) -> str:
    for _ in range(rng.randint(1, 3)):
        i = rng.randint(0, len(text))
        j = rng.randint(i, min(len(text), i + 40))
        op = rng.randrange(10)
        if op == 0:
            text = text[:i]
        elif op == 1:
            text = text[:i] + rng.choice(NASTY) + text[i:]
        elif op == 2:
            text = text[:i] + rng.choice(NASTY) + text[j:]
        elif op == 3:
            text = text[:i] + text[i:j] * rng.randint(2, 50) + text[j:]
        elif op == 4:
            text = rng.choice(PROSE) + text + rng.choice(("", "<|im_end|>", "<|eot_id|>", "</s>", "\n```"))
        elif op == 5:
            text = text.replace('"', "'", rng.randint(1, 5))
        elif op == 6:
            text = text[:i] + "".join(chr(rng.randrange(0x110000)) for _ in range(rng.randint(1, 8))) + text[i:]
        elif op == 7:
            text = rng.choice(("<tool_call>", "```json\n", "[TOOL_CALLS]", "<|python_tag|>")) + text
        elif op == 8:  # code that would leave a trace if anything ever evaluated model output
            code = f"__import__('pathlib').Path({marker!r}).touch()"
            text = text[:i] + rng.choice((code, f"x={code}", f'"{code}"', f"[f(a={code})]")) + text[i:]
        else:
            text = text[:i] + rng.choice(NASTY) * rng.randint(2, 200) + text[i:]
    return text


def _large_text(rng: random.Random) -> str:
    """A long output: a repeated piece (the slow paths of the past) or a long value, sometimes past the size cap."""
    piece = rng.choice(NASTY + ("<think>", "```", "{", "<|im_end|>", '{"name": "f", "arguments": {"a": 1}} ',
                                "[f(a=1)]", "<tool_call>f(a=1)</tool_call>", "1,"))
    size = rng.choice((100_000, 500_000, MAX_OUTPUT_CHARS - 10, MAX_OUTPUT_CHARS + 10))
    return (rng.choice(PROSE) + piece * (size // len(piece) + 1))[:size]


def _inject(calls: list[dict], rng: random.Random, make) -> list[dict]:
    """Put a garbage value (or key, or name) somewhere in a copy of the calls."""
    calls = copy.deepcopy(calls) or [{"name": "f", "arguments": {}}]
    call = rng.choice(calls)
    where = rng.randrange(4)
    if where == 0 and call["arguments"]:
        call["arguments"][rng.choice(list(call["arguments"]))] = make(rng)
    elif where == 1:
        value = make(rng)
        try:
            call["arguments"][value if rng.random() < 0.3 else "extra"] = make(rng)
        except TypeError:  # an unhashable value cannot be a key
            call["arguments"]["extra"] = value
    elif where == 2:
        call["name"] = rng.choice(("\ud800", "", " ", "x" * 10_000, "a.b.c", "f\x00", call["name"] + "\udfff"))
    else:
        call["arguments"] = {"nested": make(rng), "list": [make(rng), make(rng)]}
    return calls


def _garbage_trace(rng: random.Random, raw: str):
    op = rng.randrange(6)
    if op == 0:
        return rng.choice((None, [], "raw text", 5, b"x", [{"raw": raw}]))
    if op == 1:
        return {"raw": rng.choice((b"x", 5, None, [raw], {"text": raw}, bytearray(b"y"), 1.5))}
    if op == 2:
        return {"raw": raw, "model": _garbage_value(rng), "sample": _garbage_value(rng)}
    if op == 3:
        return {"raw": raw, "tool_calls": rng.choice(({}, "", 0, (), "x", {"name": "f"}, [None], [[]], [""]))}
    if op == 4:
        return {"tool_calls": [_garbage_value(rng) for _ in range(rng.randint(1, 3))]}
    return {"raw": raw, "tool_calls": rng.choice((None, []))}


def _openai_garbage(calls: list[dict], rng: random.Random, marker: str) -> list:
    structured = render(copy.deepcopy(calls) or [{"name": "f", "arguments": {}}], "openai")
    item = rng.choice(structured)
    op = rng.randrange(6)
    if op == 0:
        item["function"]["arguments"] = _mutate_text(item["function"]["arguments"], rng, marker)
    elif op == 1:
        item["function"]["arguments"] = _garbage_value(rng)
    elif op == 2:
        item["function"]["arguments"] = rng.choice(('{"a": ' + "1" * 5000 + "}", "[" * 1000 + "]" * 1000,
                                                    '{"\\ud800": 1}', '{"a": "\\udfff"}', '{"a": NaN}', "null", '""'))
    elif op == 3:
        item["function"]["name"] = _garbage_value(rng)
    elif op == 4:
        item["function"] = _garbage_value(rng)
    else:
        structured[rng.randrange(len(structured))] = _garbage_value(rng)
    return structured


def _spliced(calls: list[dict], rng: random.Random, marker: str) -> str:
    """A rendered answer with one argument's value replaced by a hostile snippet of the format's own syntax."""
    fmt = rng.choice(TEXT_FORMATS)
    source = copy.deepcopy(calls) or [{"name": "f", "arguments": {}}]
    call = rng.choice(source)
    call["arguments"][rng.choice(list(call["arguments"]) or ["extra"])] = _PLACEHOLDER
    raw = render(source, fmt)
    if fmt == "python":
        raw = raw.replace(repr(_PLACEHOLDER), rng.choice(HOSTILE_PYTHON), 1)
    else:
        raw = raw.replace(json.dumps(_PLACEHOLDER), rng.choice(HOSTILE_JSON), 1)
    return _mutate_text(raw, rng, marker) if rng.random() < 0.3 else raw


def fuzz_traces(tasks: list[tuple[Task, list[list[dict]]]], n: int, seed: int, marker: str,
                large_share: float = 0.01) -> Iterator[tuple[Task, object, str]]:
    """n (task, trace, kind) triples; `kind` says how the trace was made (text, spliced, openai, canonical,
    trace, large). A share `large_share` are long outputs (100 KB up to just past the size cap)."""
    rng = random.Random(seed)
    for _ in range(n):
        task, answers = rng.choice(tasks)
        calls = rng.choice(answers)
        head = {"task_id": task.id, "model": "fuzz", "sample": 0}
        if rng.random() < large_share:
            yield task, {**head, "raw": _large_text(rng)}, "large"
            continue
        kind = rng.choice(KINDS)
        if kind == "text" and rng.random() < 0.35:
            yield task, {**head, "raw": _spliced(calls, rng, marker)}, "spliced"
        elif kind == "text":
            fmt = rng.choice(TEXT_FORMATS)
            source = _inject(calls, rng, _json_garbage) if rng.random() < 0.3 else calls
            try:
                raw = render(source, fmt) if source else rng.choice(PROSE) + "No function fits."
            except (ValueError, RecursionError):  # render's repr/json.dumps refuse some garbage: keep it as JSON
                raw = json.dumps(source, ensure_ascii=False, check_circular=False)
            yield task, {**head, "raw": _mutate_text(raw, rng, marker)}, kind
        elif kind == "openai":
            yield task, {**head, "raw": "", "tool_calls": _openai_garbage(calls, rng, marker)}, kind
        elif kind == "canonical":
            yield task, {**head, "tool_calls": _inject(calls, rng, _garbage_value)}, kind
        else:
            yield task, _garbage_trace(rng, render(calls, "hermes") if calls else "no call"), kind
