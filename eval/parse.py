"""Parse raw model output into function calls, for the formats small and large models really emit.

    parse_output('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>')
    -> Parsed(status="calls", calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}], format="hermes")

Formats: OpenAI structured `tool_calls` (arguments as a JSON string or an object), Hermes/Qwen
`<tool_call>{...}</tool_call>` (one or several), a bare JSON object or list (`name` with `arguments` or
`parameters`), code-fenced JSON, Python call syntax as BFCL prompts ask for (`[f(a=1), g(b="x")]`, parsed with
`ast`, never evaluated), Llama 3 `<|python_tag|>` JSON, Mistral `[TOOL_CALLS][...]` and `[TOOL_CALLS]name[ARGS]{...}`.

Three outcomes: `calls` (a non-empty list of {"name", "arguments"}), `no_call` (prose, or an empty list), and
`malformed` (an attempt at a call that does not parse, or calls JSON cannot carry). Whole-output parsing is written
here because no library covers these formats together (each serving engine ships a parser for its own model
family only).

The text is untrusted. This module only reads it with `json` and `ast.parse`; nothing is executed.
`parse_output` and `parse_tool_calls` return a Parsed for any input and never raise; the work is linear in the
input's length, and at most MAX_OUTPUT_CHARS characters are read (MAX_PYTHON_CHARS for Python call syntax, whose
`ast` tree costs about 500 bytes and several microseconds per token). Returned calls hold only what JSON can carry
and a UTF-8 file can store: string keys, finite numbers, integers under 4,000 digits, no lone surrogates, at most
MAX_NESTING levels of nesting, at most MAX_CALLS calls; anything else is `malformed` with a short reason. Values
quoted in a reason are cut to a few dozen characters (`short_repr`).
"""

from __future__ import annotations

import ast
import json
import math
import re
import reprlib
import warnings
from dataclasses import dataclass

CALLS, NO_CALL, MALFORMED = "calls", "no_call", "malformed"

INTERNAL_ERROR = "the verifier could not check this output"  # the detail of a last-resort verdict
MAX_OUTPUT_CHARS = 1_000_000  # longer raw output (or structured tool_calls) is malformed, unread
MAX_PYTHON_CHARS = 100_000  # Python call syntax past this is malformed: ast.parse of 1 MB takes seconds and ~500 MB
MAX_CALLS = 1_000  # calls in one answer (BFCL's parallel tasks expect at most a few dozen)
MAX_NESTING = 100  # lists/objects inside one call's arguments (BFCL's deepest answer: 8; jsonschema-rs stops at 255)
MAX_DETAIL_CHARS = 300  # a verdict's detail (eval.verify) is cut to this length
_INT_LIMIT = 10**4000  # JSON writers refuse integers past 4,300 digits (Python's int/str conversion limit)


@dataclass(slots=True)  # created once per trace: slots, not frozen, keeps construction cheap
class Parsed:
    status: str  # CALLS | NO_CALL | MALFORMED
    calls: list[dict] | None = None  # [{"name": str, "arguments": dict}], [] for no_call, None when malformed
    format: str = "text"  # which format was recognised: openai, hermes, json, fenced, python, llama3, mistral, text
    detail: str = ""

    @property
    def trace_tool_calls(self) -> list[dict] | None:
        """The value of a trace's `tool_calls` field: the calls, [] for no call, None when malformed."""
        return self.calls


class _Malformed(Exception):
    pass


def _malformed(fmt: str, why: str) -> Parsed:
    return Parsed(MALFORMED, None, fmt, why)


def _found(fmt: str, calls: list[dict]) -> Parsed:
    if not calls:
        return Parsed(NO_CALL, [], fmt, "empty list of calls")
    problem = calls_problem(calls)
    if problem is not None:
        return Parsed(MALFORMED, None, fmt, problem)
    return Parsed(CALLS, calls, fmt, "")


# --- what JSON can carry ----------------------------------------------------------------------------------------

_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlong = 40, 40, 40
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = _SHORT.maxfrozenset = 6
_SHORT.maxlevel = 3


def short_repr(value, limit: int = 60) -> str:
    """repr() cut to about `limit` characters, for quoting untrusted values in a reason: never raises, never
    copies a large value whole, and escapes lone surrogates (repr does)."""
    t = type(value)
    try:
        if t is str:
            text = repr(value[: limit + 1])
        elif t is int and not -_INT_LIMIT < value < _INT_LIMIT:
            text = f"<an integer of {value.bit_length():,} bits>"  # repr() raises past 4,300 digits
        elif t is int or t is float or t is bool or value is None:
            text = repr(value)
        else:
            text = _SHORT.repr(value)
    except Exception:  # a hostile __repr__ or a value reprlib cannot walk: name its type only
        text = f"<{t.__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    """A message cut to `limit` characters (its start and end kept: a validator's message ends with what failed)
    and safe to write as UTF-8 (lone surrogates escaped)."""
    if len(text) > limit:
        half = (limit - 5) // 2
        text = f"{text[:half]} ... {text[-half:]}"
    return text if _utf8_ok(text) else text.encode("utf-8", "backslashreplace").decode("utf-8")


def _utf8_ok(text: str) -> bool:
    """False for a string holding a lone surrogate (legal in a JSON escape, "\\ud800", but not storable as UTF-8)."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _scalar_problem(value) -> str | None:
    """Why a value that is not a list or object cannot be carried as JSON (a noun phrase), or None."""
    t = type(value)
    if t is str:
        return None if _utf8_ok(value) else f"a string with a lone surrogate ({short_repr(value, 30)}), which UTF-8 cannot store"
    if t is int:
        return None if -_INT_LIMIT < value < _INT_LIMIT else "an integer of more than 4,000 digits"
    if t is float:
        return None if math.isfinite(value) else f"the number {value!r}, which JSON cannot carry"
    if t is bool or value is None:
        return None
    return f"{short_repr(value, 30)} ({t.__name__}), which JSON cannot carry"


NOT_CANONICAL = "not a list of {'name': str, 'arguments': dict}"  # what calls_problem says of other shapes


def calls_problem(calls: list[dict]) -> str | None:
    """Why calls cannot be carried as JSON and checked, or None when they can: NOT_CANONICAL (this very string)
    unless they are [{"name": str, "arguments": dict}, ...], then every value at every depth, without recursion,
    within MAX_OUTPUT_CHARS. It runs on every verdict, so the top level is inline and each object's keys are
    checked by one C call (about 1 us a call)."""
    if type(calls) is not list:
        return NOT_CANONICAL
    if len(calls) > MAX_CALLS:
        return f"{len(calls):,} calls, more than the {MAX_CALLS:,} the verifier reads"
    budget = MAX_OUTPUT_CHARS
    for call in calls:
        # (a problem found before a call of another shape is the problem parse_tool_calls would find too)
        if type(call) is not dict:
            return NOT_CANONICAL
        name, arguments = call.get("name"), call.get("arguments")
        if type(name) is not str or type(arguments) is not dict:
            return NOT_CANONICAL
        if not name.isascii() and not _utf8_ok(name):
            return f"function name {short_repr(name)} holds a lone surrogate, which UTF-8 cannot store"
        nested = [(arguments, 1)]
        while nested:
            container, depth = nested.pop()
            if depth > MAX_NESTING:
                return f"arguments of {short_repr(name)} are nested deeper than {MAX_NESTING} levels"
            budget -= len(container) + 1  # before the loop: a container of millions of items stops here
            if budget < 0:
                return f"calls larger than the {MAX_OUTPUT_CHARS:,} characters the verifier reads"
            if type(container) is dict:
                try:
                    keys = "".join(container)  # one C call: every key is a string, and their characters
                except TypeError:
                    key = next(k for k in container if type(k) is not str)
                    return f"arguments of {short_repr(name)} have a key {short_repr(key)} that is not a string"
                if not keys.isascii() and not _utf8_ok(keys):
                    return f"arguments of {short_repr(name)} have a key with a lone surrogate, which UTF-8 cannot store"
                budget -= len(keys)
                container = container.values()
            for value in container:
                t = type(value)
                if t is str:
                    budget -= len(value)
                    if value.isascii():
                        continue
                elif t is int:
                    if -_INT_LIMIT < value < _INT_LIMIT:
                        continue
                elif t is dict or t is list:
                    nested.append((value, depth + 1))
                    continue
                elif t is bool or value is None:
                    continue
                problem = _scalar_problem(value)
                if problem is not None:
                    return f"arguments of {short_repr(name)} hold {problem}"
        if budget < 0:
            return f"calls larger than the {MAX_OUTPUT_CHARS:,} characters the verifier reads"
    return None


# --- normalising one call -----------------------------------------------------------------------------------


def _arguments_json(text: str, name: str) -> object:
    """OpenAI-style arguments string -> value; every way json can fail on untrusted text becomes _Malformed."""
    what = f"arguments of {short_repr(name)}"
    if len(text) > MAX_OUTPUT_CHARS:
        raise _Malformed(f"{what} are longer than the {MAX_OUTPUT_CHARS:,} characters the verifier reads")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _Malformed(f"{what} are not valid JSON ({e.msg} at column {e.colno})") from None
    except ValueError:  # the only other: an integer past Python's 4,300-digit conversion limit
        raise _Malformed(f"{what} hold an integer of more than 4,300 digits") from None
    except RecursionError:
        raise _Malformed(f"{what} are nested too deeply") from None


def _too_many(n: int) -> None:
    if n > MAX_CALLS:
        raise _Malformed(f"more than {MAX_CALLS:,} calls in one answer")


def _call_from_obj(obj) -> dict:
    """{"name", "arguments"|"parameters"} or OpenAI's {"type": "function", "function": {...}} -> canonical call."""
    if not isinstance(obj, dict):
        raise _Malformed(f"a call must be an object, got {type(obj).__name__}")
    if "function" in obj and isinstance(obj["function"], dict):
        obj = obj["function"]
    name = obj.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _Malformed("call without a function name")
    if "arguments" in obj:
        args = obj["arguments"]
    elif "parameters" in obj:
        args = obj["parameters"]
    else:
        args = {}
    if isinstance(args, str):
        # OpenAI and most servers send arguments as a JSON string; an empty string means no arguments.
        args = _arguments_json(args, name) if args.strip() else {}
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _Malformed(f"arguments of {short_repr(name)} must be an object, got {type(args).__name__}")
    if type(args) is not dict:  # a dict subclass built in Python (OrderedDict...): a plain dict, as JSON reads it
        args = dict(args)
    return {"name": name.strip(), "arguments": args}


def _calls_from_json_value(value) -> list[dict]:
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        value = value["tool_calls"]
    if isinstance(value, list):
        _too_many(len(value))
        return [_call_from_obj(v) for v in value]
    return [_call_from_obj(value)]


# --- Python call syntax (BFCL's prompt format) ----------------------------------------------------------------


def _dotted_name(node: ast.expr) -> str:
    parts = []
    while isinstance(node, ast.Attribute):  # a loop: a.b.c... 100,000 deep must not recurse
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        raise _Malformed("call target is not a (dotted) name")
    parts.append(node.id)
    return ".".join(reversed(parts))


_PY_SCALARS = (str, int, float, bool, type(None))


def _literal(node: ast.expr, depth: int = 1):
    """A keyword value as data. Literals stay literals (tuples and sets become lists, as after a JSON round
    trip); a bare name or any other expression becomes its source text, as BFCL's decoder does for variables and
    arithmetic. Literals JSON cannot carry (bytes, complex, ..., non-string keys) are malformed."""
    if depth > MAX_NESTING:
        raise _Malformed(f"an argument nested deeper than {MAX_NESTING} levels")
    if isinstance(node, ast.Constant):
        if not isinstance(node.value, _PY_SCALARS):
            raise _Malformed(f"{short_repr(node.value, 30)} ({type(node.value).__name__}), which JSON cannot carry")
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) and isinstance(node.operand, ast.Constant):
        v = node.operand.value
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
        return [_literal(e, depth + 1) for e in node.elts]
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values, strict=True):
            if k is None:
                raise _Malformed("dict unpacking (**) in an argument")
            key = _literal(k, depth + 1)
            if not isinstance(key, str):
                raise _Malformed(f"a dict key {short_repr(key, 30)} that is not a string, which JSON cannot carry")
            out[key] = _literal(v, depth + 1)
        return out
    if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)) and not node.args:
        if any(kw.arg is None for kw in node.keywords):
            raise _Malformed("keyword unpacking (**) in an argument")
        try:  # a nested call, as BFCL's decoder reads it: {name: {keyword: value}}
            return {_dotted_name(node.func): {kw.arg: _literal(kw.value, depth + 1) for kw in node.keywords}}
        except _Malformed:
            pass
    try:
        return ast.unparse(node)
    except ValueError:  # a constant inside it that repr() refuses: an integer past 4,300 digits
        raise _Malformed("an expression holding an integer of more than 4,300 digits") from None


def _call_from_ast(node: ast.expr) -> dict:
    if not isinstance(node, ast.Call):
        raise _Malformed("expected a function call")
    if node.args:
        raise _Malformed(f"positional arguments in a call to {short_repr(_dotted_name(node.func))}")
    args = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise _Malformed("keyword unpacking (**) in a call")
        args[kw.arg] = _literal(kw.value)
    return {"name": _dotted_name(node.func), "arguments": args}


def _python_tree(text: str) -> ast.expr:
    text = text.strip()
    if len(text) > MAX_PYTHON_CHARS:
        raise _Malformed(f"Python call syntax longer than the {MAX_PYTHON_CHARS:,} characters the verifier reads")
    try:
        with warnings.catch_warnings():  # invalid escapes in model text are the model's problem, not a warning
            warnings.simplefilter("ignore")
            return ast.parse(text, mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise _Malformed(f"not valid Python call syntax ({type(e).__name__})") from None


def _parse_python_calls(text: str) -> list[dict]:
    body = _python_tree(text)
    if isinstance(body, (ast.List, ast.Tuple)):
        _too_many(len(body.elts))
        return [_call_from_ast(e) for e in body.elts]
    return [_call_from_ast(body)]


def _python_literal(text: str):
    """A JSON-like value written as a Python literal (single quotes, True/None), as ast.literal_eval reads it but
    into JSON types: names, calls and arithmetic are malformed here, not source text."""
    node = _python_tree(text)
    for sub in ast.walk(node):
        if not isinstance(sub, (ast.Constant, ast.List, ast.Tuple, ast.Set, ast.Dict, ast.UnaryOp, ast.USub, ast.UAdd, ast.expr_context)):
            raise _Malformed(f"not valid JSON or a Python literal ({type(sub).__name__} in it)")
    return _literal(node, 0)


# --- recognising the format -----------------------------------------------------------------------------------

_CALL_START = re.compile(r"^\[?\s*[A-Za-z_][\w.]*\s*\(")
_END_TOKENS = ("<|eom_id|>", "<|eot_id|>", "<|im_end|>", "</s>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


# Whitespace and end tokens, reversed: the run of them at the end of a text is a match at the start of the reversed
# text (no end token ends with another, so the longest run is what stripping them one by one leaves).
_END_RUN_REVERSED = re.compile("(?:\\s|" + "|".join(re.escape(tok[::-1]) for tok in _END_TOKENS) + ")*")


def _strip_end_tokens(text: str) -> str:
    """The text without surrounding whitespace and trailing end-of-turn tokens (any number, any order), in one
    regex pass over the reversed text (stripping token by token copied the text per token: quadratic)."""
    text = text.strip()
    if not text.endswith(_END_TOKENS):
        return text
    return text[: len(text) - _END_RUN_REVERSED.match(text[::-1]).end()]


def _drop_think(text: str) -> str:
    """Remove every complete <think>...</think> block. A find loop instead of the regex `<think>.*?</think>`,
    which retried from every unclosed `<think>` to the end of the text (quadratic)."""
    start = text.find("<think>")
    if start == -1:
        return text
    kept, pos = [], 0
    while start != -1:
        end = text.find("</think>", start + len("<think>"))
        if end == -1:  # no block closes after this one, so none after it can either
            break
        kept.append(text[pos:start])
        pos = end + len("</think>")
        start = text.find("<think>", pos)
    kept.append(text[pos:])
    return "".join(kept)


def _fenced_body(text: str) -> str | None:
    """What the first ``` fence holds: from the line after its opening to the next ``` (or the end), as the regex
    ```[^\\n]*\\n(.*?)(?:```|$) would find, without retrying from every ``` when no newline follows."""
    start = text.find("```")
    if start == -1:
        return None
    newline = text.find("\n", start + 3)
    if newline == -1:
        return None
    close = text.find("```", newline + 1)
    return text[newline + 1 :] if close == -1 else text[newline + 1 : close]


def _parse_body(body: str) -> list[dict]:
    """The inside of a tag or fence, or a whole output: Python call syntax if it starts like a call, else JSON
    (or a Python literal with single quotes and True/None, which models write for JSON just as often)."""
    body = _strip_end_tokens(body)
    if _CALL_START.match(body):
        return _parse_python_calls(body)
    if body.startswith(("{", "[")):
        try:
            value = json.loads(body)
        except json.JSONDecodeError as json_error:
            try:
                value = _python_literal(body)
            except _Malformed:
                raise _Malformed(f"not valid JSON ({json_error.msg} at column {json_error.colno})") from None
        except ValueError:
            raise _Malformed("the JSON holds an integer of more than 4,300 digits") from None
        except RecursionError:
            raise _Malformed("the JSON is nested too deeply") from None
        return _calls_from_json_value(value)
    return _parse_python_calls(body)


_DECODER = json.JSONDecoder()
_SPACE = re.compile(r"[ \t\r\n]*")
_SPACE_SEMI = re.compile(r"[ \t\r\n;]*")


def _skip(text: str, pos: int, pattern: re.Pattern = _SPACE) -> int:
    return pattern.match(text, pos).end()


def _json_at(text: str, pos: int, what: str):
    """Decode one JSON value starting at pos (strings inside it may contain any tag); (value, end)."""
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        raise _Malformed(f"not valid JSON in {what} ({e.msg} at column {e.colno})") from None
    except ValueError:
        raise _Malformed(f"the JSON in {what} holds an integer of more than 4,300 digits") from None
    except RecursionError:
        raise _Malformed(f"the JSON in {what} is nested too deeply") from None


def _parse_hermes(text: str) -> Parsed:
    calls = []
    pos = text.find("<tool_call>")
    while pos != -1:
        pos = _skip(text, pos + len("<tool_call>"))
        if text.startswith(("{", "["), pos):
            value, pos = _json_at(text, pos, "<tool_call>")
            calls.extend(_calls_from_json_value(value))
            pos = _skip(text, pos)
            if text.startswith("</tool_call>", pos):
                pos += len("</tool_call>")
            elif pos < len(text) and not text.startswith("<tool_call>", pos):
                raise _Malformed("unexpected text after the JSON inside <tool_call>")
        else:  # Python call syntax inside the tags
            close = text.find("</tool_call>", pos)
            body = text[pos:] if close == -1 else text[pos:close]
            if not body.strip():
                raise _Malformed("empty <tool_call> block")
            calls.extend(_parse_body(body))
            pos = len(text) if close == -1 else close + len("</tool_call>")
        _too_many(len(calls))
        pos = text.find("<tool_call>", pos)
    return _found("hermes", calls)


_MISTRAL_NAME = re.compile(r"([^\[\]\s{}]+)\s*\[ARGS\]")


def _parse_mistral(text: str) -> Parsed:
    pos = _skip(text, text.index("[TOOL_CALLS]") + len("[TOOL_CALLS]"))
    if text.startswith(("[", "{"), pos):  # [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]
        value, end = _json_at(text, pos, "[TOOL_CALLS]")
        if _strip_end_tokens(text[end:]):
            raise _Malformed("unexpected text after the [TOOL_CALLS] JSON")
        return _found("mistral", _calls_from_json_value(value))
    calls = []  # v11+ tokenizers: [TOOL_CALLS]name[ARGS]{...}[TOOL_CALLS]name2[ARGS]{...}
    while True:
        m = _MISTRAL_NAME.match(text, pos)
        if not m:
            raise _Malformed("[TOOL_CALLS] not followed by a JSON list or name[ARGS]{...}")
        args, pos = _json_at(text, _skip(text, m.end()), f"the arguments of {short_repr(m.group(1))}")
        calls.append(_call_from_obj({"name": m.group(1), "arguments": args}))
        _too_many(len(calls))
        pos = _skip(text, pos)
        if not text.startswith("[TOOL_CALLS]", pos):
            break
        pos = _skip(text, pos + len("[TOOL_CALLS]"))
    if _strip_end_tokens(text[pos:]):
        raise _Malformed("unexpected text after the last [ARGS] object")
    return _found("mistral", calls)


def _parse_llama3(text: str) -> Parsed:
    calls = []
    pos = _skip(text, text.index("<|python_tag|>") + len("<|python_tag|>"))
    rest = _strip_end_tokens(text[pos:])
    if not rest.startswith(("{", "[")):
        return _found("llama3", _parse_python_calls(rest))  # <|python_tag|> before Python code
    pos = 0
    while pos < len(rest):
        value, pos = _json_at(rest, pos, "<|python_tag|>")
        calls.extend(_calls_from_json_value(value))
        _too_many(len(calls))
        # Llama 3.1 separates several JSON calls with ';' (and sometimes repeats the tag)
        pos = _skip(rest, pos, _SPACE_SEMI)
        if rest.startswith("<|python_tag|>", pos):
            pos = _skip(rest, pos + len("<|python_tag|>"))
    return _found("llama3", calls)


# --- a call-shaped JSON value inside prose -------------------------------------------------------------------

_JSON_START = re.compile(r'\{\s*"|\[\s*\{\s*"')  # an object with a string key, or a list of them
MAX_EMBEDDED_ATTEMPTS = 1_000  # JSON decodes tried inside one prose output


def _embedded_json_call(text: str) -> list[dict] | None:
    """Prose with a call-shaped JSON object inside ("Sure, here it is: {"name": ...}"): the first such object
    or list, or a value inside the first JSON value that holds one; None when there is none.

    Linear: a decode that fails at some point resumes the search there, one that succeeds resumes after the value
    (whose insides are searched as data), and at most MAX_EMBEDDED_ATTEMPTS decodes are tried (retrying json at
    every bracket was quadratic: 20 s for 300,000 braces)."""
    pos = 0
    for _ in range(MAX_EMBEDDED_ATTEMPTS):
        m = _JSON_START.search(text, pos)
        if m is None:
            return None
        start = m.start()
        value, pos = _decode_at(text, start)
        if pos is None:  # no string can end after this point, so no call can start there either
            return None
        calls = _first_call_shaped(value) if value is not None else None
        if calls:
            return calls
        pos = max(pos, start + 1)
    return None


def _decode_at(text: str, start: int):
    """(value, end) of the JSON value at start, or (None, where decoding failed); (None, None) for a string that
    never ends. Decodes a window that grows 4x until the value or its error lies inside it, because a
    JSONDecodeError computes its line and column from the start of the text it was given: decoding the whole text
    at every start was quadratic."""
    size = 4096
    while True:
        window = text[start : start + size]
        try:
            value, end = _DECODER.raw_decode(window)
            return value, start + end
        except json.JSONDecodeError as e:
            cut = start + size < len(text)
            if cut and (e.pos >= len(window) - 16 or e.msg.startswith("Unterminated string")):
                size *= 4  # the error may be the window's cut, not the text's
                continue
            if e.msg.startswith("Unterminated string"):
                return None, None
            return None, start + e.pos
        except ValueError:  # an integer past 4,300 digits
            return None, start + 1
        except RecursionError:  # nesting past the interpreter's limit: no call in this window can be checked
            return None, start + len(window)


def _call_shaped(x) -> bool:
    if type(x) is not dict:
        return False
    fn = x.get("function")
    if type(fn) is dict:
        x = fn
    return type(x.get("name")) is str and ("arguments" in x or "parameters" in x)


def _first_call_shaped(value) -> list[dict] | None:
    """The calls of the first value, in document order, that reads as calls which all carry arguments."""
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is dict:
            items = v["tool_calls"] if type(v.get("tool_calls")) is list else [v]
            children = list(v.values())
        elif type(v) is list:
            items = children = v
        else:
            continue
        if items and all(_call_shaped(x) for x in items):
            _too_many(len(items))  # more calls than the verifier reads is malformed, not its first call
            try:
                return _calls_from_json_value(v)
            except _Malformed:
                pass
        stack.extend(c for c in reversed(children) if type(c) is dict or type(c) is list)
    return None


# --- entry points -----------------------------------------------------------------------------------------------


def _parse_text(raw: str) -> Parsed:
    text = _drop_think(raw)
    if "</think>" in text:  # a template that put <think> in the prompt leaves only the closing tag
        text = text.split("</think>", 1)[1]
    text = _strip_end_tokens(text)
    if not text:
        return Parsed(NO_CALL, [], "text", "empty output")
    if (text.startswith(("{", "[")) and not text.startswith("[TOOL_CALLS]")) or _CALL_START.match(text):
        fmt = "python" if _CALL_START.match(text) else "json"
        try:
            return _found(fmt, _parse_body(text))
        except _Malformed:
            if not any(marker in text for marker in ("<tool_call>", "[TOOL_CALLS]", "<|python_tag|>")):
                raise
    if "<tool_call>" in text:
        return _parse_hermes(text)
    if "[TOOL_CALLS]" in text:
        return _parse_mistral(text)
    if "<|python_tag|>" in text:
        return _parse_llama3(text)
    fenced = _fenced_body(text)
    if fenced is not None:
        body = _strip_end_tokens(fenced)
        if body.startswith(("{", "[")) or _CALL_START.match(body):
            return _found("fenced", _parse_body(body))
    embedded = _embedded_json_call(text)
    if embedded:
        return _found("json", embedded)
    return Parsed(NO_CALL, [], "text", "prose without a call")


def parse_tool_calls(tool_calls: list) -> Parsed:
    """OpenAI's structured `message.tool_calls` (arguments as a JSON string or an object), any structure."""
    try:
        if not isinstance(tool_calls, list):
            raise _Malformed(f"tool_calls must be a list, got {type(tool_calls).__name__}")
        _too_many(len(tool_calls))
        calls, read = [], 0
        for tc in tool_calls:
            read += 1 + _arguments_length(tc)
            if read > MAX_OUTPUT_CHARS:
                raise _Malformed(f"tool_calls longer than the {MAX_OUTPUT_CHARS:,} characters the verifier reads")
            calls.append(_call_from_obj(tc))
        return _found("openai", calls)
    except _Malformed as e:
        return _malformed("openai", str(e))
    except (RecursionError, MemoryError) as e:
        return _malformed("openai", f"tool_calls cannot be read ({type(e).__name__})")
    except Exception as e:  # a last resort, never expected: the fuzz tests assert this detail never appears
        return _malformed("openai", f"{INTERNAL_ERROR}: {type(e).__name__}")


def _arguments_length(tc) -> int:
    """Length of a structured call's arguments when they are a JSON string (what decoding it will read)."""
    if not isinstance(tc, dict):
        return 0
    fn = tc.get("function")
    fn = fn if isinstance(fn, dict) else tc
    args = fn.get("arguments", fn.get("parameters"))
    return len(args) if isinstance(args, str) else 0


def parse_output(raw: str | None, tool_calls: list | None = None) -> Parsed:
    """Parse one model answer. Structured `tool_calls` (from an OpenAI-compatible server) win when present and
    not empty; otherwise the raw text is read. Never raises, whatever `raw` and `tool_calls` hold."""
    if tool_calls is not None and not (isinstance(tool_calls, (list, tuple, dict, str)) and not tool_calls):
        return parse_tool_calls(tool_calls)
    if raw is None:
        return Parsed(NO_CALL, [], "text", "no output")
    if not isinstance(raw, str):
        return _malformed("text", f"raw output must be text, got {type(raw).__name__}")
    if len(raw) > MAX_OUTPUT_CHARS:
        return _malformed(_guess_format(raw[:1000]), f"output of {len(raw):,} characters, longer than the {MAX_OUTPUT_CHARS:,} the verifier reads")
    try:
        return _parse_text(raw)
    except _Malformed as e:
        return _malformed(_guess_format(raw), str(e))
    except (RecursionError, MemoryError) as e:  # a parser's own limits, e.g. ast on deeply nested brackets
        return _malformed(_guess_format(raw), f"nested too deeply ({type(e).__name__})")
    except Exception as e:  # a last resort, never expected: the fuzz tests assert this detail never appears
        return _malformed(_guess_format(raw), f"{INTERNAL_ERROR}: {type(e).__name__}")


def _guess_format(raw: str) -> str:
    for marker, fmt in (("<tool_call>", "hermes"), ("[TOOL_CALLS]", "mistral"), ("<|python_tag|>", "llama3"), ("```", "fenced")):
        if marker in raw:
            return fmt
    return "python" if _CALL_START.match(raw.strip()) else "json"


# --- rendering (the inverse, for prompts, synthetic negatives and round-trip tests) ---------------------------

FORMATS = ("openai", "hermes", "json", "json_list", "fenced", "python", "llama3", "mistral", "mistral_v11")


def _py_value(v) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_py_value(k)}: {_py_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, list):
        return "[" + ", ".join(_py_value(x) for x in v) + "]"
    return repr(v)


def render_python(calls: list[dict]) -> str:
    return "[" + ", ".join(
        f"{c['name']}(" + ", ".join(f"{k}={_py_value(v)}" for k, v in c["arguments"].items()) + ")" for c in calls
    ) + "]"


def render(calls: list[dict], fmt: str) -> str | list[dict]:
    """Render canonical calls in one of FORMATS; `openai` gives a structured tool_calls list, the rest text."""
    dumps = lambda obj: json.dumps(obj, ensure_ascii=False)  # noqa: E731
    if fmt == "openai":
        return [
            {"id": f"call_{i}", "type": "function", "function": {"name": c["name"], "arguments": dumps(c["arguments"])}}
            for i, c in enumerate(calls)
        ]
    if fmt == "hermes":
        return "\n".join(f"<tool_call>\n{dumps(c)}\n</tool_call>" for c in calls)
    if fmt == "json":
        return dumps(calls[0]) if len(calls) == 1 else dumps(calls)
    if fmt == "json_list":
        return dumps(calls)
    if fmt == "fenced":
        return "```json\n" + dumps(calls) + "\n```"
    if fmt == "python":
        return render_python(calls)
    if fmt == "llama3":
        return "<|python_tag|>" + "; ".join(dumps({"name": c["name"], "parameters": c["arguments"]}) for c in calls) + "<|eom_id|>"
    if fmt == "mistral":
        return "[TOOL_CALLS]" + dumps(calls)
    if fmt == "mistral_v11":
        return "".join(f"[TOOL_CALLS]{c['name']}[ARGS]{dumps(c['arguments'])}" for c in calls)
    raise ValueError(f"unknown format {fmt!r}; one of {', '.join(FORMATS)}")
