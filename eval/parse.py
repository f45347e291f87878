"""Parse raw model output into function calls, for the formats small and large models really emit.

    parse_output('<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>')
    -> Parsed(status="calls", calls=[{"name": "get_weather", "arguments": {"city": "Paris"}}], format="hermes")

Formats: OpenAI structured `tool_calls` (arguments as a JSON string or an object), Hermes/Qwen
`<tool_call>{...}</tool_call>` (one or several), a bare JSON object or list (`name` with `arguments` or
`parameters`), code-fenced JSON, Python call syntax as BFCL prompts ask for (`[f(a=1), g(b="x")]`, parsed with
`ast`, never evaluated), Llama 3 `<|python_tag|>` JSON, Mistral `[TOOL_CALLS][...]` and `[TOOL_CALLS]name[ARGS]{...}`.

Three outcomes: `calls` (a non-empty list of {"name", "arguments"}), `no_call` (prose, or an empty list), and
`malformed` (an attempt at a call that does not parse). The text is untrusted: this module only reads it with
`json` and `ast.parse`; nothing is executed. Whole-output parsing is written here because no library covers these
formats together (each serving engine ships a parser for its own model family only).
"""

from __future__ import annotations

import ast
import json
import re
import warnings
from dataclasses import dataclass

CALLS, NO_CALL, MALFORMED = "calls", "no_call", "malformed"


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
    return Parsed(CALLS, calls, fmt, "")


# --- normalising one call -----------------------------------------------------------------------------------


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
        if not args.strip():
            args = {}
        else:
            try:
                args = json.loads(args)
            except json.JSONDecodeError as e:
                raise _Malformed(f"arguments of {name!r} are not valid JSON ({e.msg})") from None
    if args is None:
        args = {}
    if not isinstance(args, dict):
        raise _Malformed(f"arguments of {name!r} must be an object, got {type(args).__name__}")
    return {"name": name.strip(), "arguments": args}


def _calls_from_json_value(value) -> list[dict]:
    if isinstance(value, list):
        return [_call_from_obj(v) for v in value]
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        return [_call_from_obj(v) for v in value["tool_calls"]]
    return [_call_from_obj(value)]


def _json_loads(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise _Malformed(f"not valid JSON ({e.msg} at column {e.colno})") from None


# --- Python call syntax (BFCL's prompt format) ----------------------------------------------------------------


def _dotted_name(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted_name(node.value)}.{node.attr}"
    raise _Malformed("call target is not a (dotted) name")


def _literal(node: ast.expr):
    """A keyword value as data. Literals stay literals (tuples become lists, as after a JSON round trip); a bare
    name or any other expression becomes its source text, as BFCL's decoder does for variables and arithmetic."""
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)) and isinstance(node.operand, ast.Constant):
        v = node.operand.value
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Dict):
        if any(k is None for k in node.keys):
            raise _Malformed("dict unpacking (**) in an argument")
        return {_literal(k): _literal(v) for k, v in zip(node.keys, node.values, strict=True)}
    if isinstance(node, ast.Set):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute)) and not node.args:
        try:  # a nested call, as BFCL's decoder reads it: {name: {keyword: value}}
            return {_dotted_name(node.func): {kw.arg: _literal(kw.value) for kw in node.keywords}}
        except _Malformed:
            pass
    return ast.unparse(node)


def _call_from_ast(node: ast.expr) -> dict:
    if not isinstance(node, ast.Call):
        raise _Malformed("expected a function call")
    if node.args:
        raise _Malformed(f"positional arguments in a call to {_dotted_name(node.func)!r}")
    args = {}
    for kw in node.keywords:
        if kw.arg is None:
            raise _Malformed("keyword unpacking (**) in a call")
        args[kw.arg] = _literal(kw.value)
    return {"name": _dotted_name(node.func), "arguments": args}


def _parse_python_calls(text: str) -> list[dict]:
    try:
        with warnings.catch_warnings():  # invalid escapes in model text are the model's problem, not a warning
            warnings.simplefilter("ignore")
            tree = ast.parse(text.strip(), mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
        raise _Malformed(f"not valid Python call syntax ({type(e).__name__})") from None
    body = tree.body
    if isinstance(body, (ast.List, ast.Tuple)):
        return [_call_from_ast(e) for e in body.elts]
    return [_call_from_ast(body)]


# --- recognising the format -----------------------------------------------------------------------------------

_THINK = re.compile(r"<think>.*?</think>", re.S)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|$)", re.S)
_CALL_START = re.compile(r"^\[?\s*[A-Za-z_][\w.]*\s*\(")
_END_TOKENS = ("<|eom_id|>", "<|eot_id|>", "<|im_end|>", "</s>", "<|end|>", "<end_of_turn>", "<|endoftext|>")


def _strip_end_tokens(text: str) -> str:
    text = text.strip()
    changed = True
    while changed:
        changed = False
        for tok in _END_TOKENS:
            if text.endswith(tok):
                text = text[: -len(tok)].rstrip()
                changed = True
    return text


def _parse_body(body: str) -> list[dict]:
    """The inside of a tag or fence, or a whole output: Python call syntax if it starts like a call, else JSON
    (or a Python literal with single quotes and True/None, which models write for JSON just as often)."""
    body = _strip_end_tokens(body)
    if _CALL_START.match(body):
        return _parse_python_calls(body)
    if body.startswith(("{", "[")):
        try:
            return _calls_from_json_value(json.loads(body))
        except json.JSONDecodeError as json_error:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    value = ast.literal_eval(body)  # reads literals only; never evaluates code
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                raise _Malformed(f"not valid JSON ({json_error.msg} at column {json_error.colno})") from None
            return _calls_from_json_value(value)
    return _parse_python_calls(body)


_DECODER = json.JSONDecoder()


def _skip(text: str, pos: int, chars: str = " \t\r\n") -> int:
    while pos < len(text) and text[pos] in chars:
        pos += 1
    return pos


def _json_at(text: str, pos: int, what: str):
    """Decode one JSON value starting at pos (strings inside it may contain any tag); (value, end)."""
    try:
        return _DECODER.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        raise _Malformed(f"not valid JSON in {what} ({e.msg} at column {e.colno})") from None


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
        args, pos = _json_at(text, _skip(text, m.end()), f"the arguments of {m.group(1)!r}")
        calls.append(_call_from_obj({"name": m.group(1), "arguments": args}))
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
        # Llama 3.1 separates several JSON calls with ';' (and sometimes repeats the tag)
        pos = _skip(rest, pos, " \t\r\n;")
        if rest.startswith("<|python_tag|>", pos):
            pos = _skip(rest, pos + len("<|python_tag|>"))
    return _found("llama3", calls)


def _embedded_json_call(text: str) -> list[dict] | None:
    """Prose with a call-shaped JSON object inside ("Sure, here it is: {"name": ...}"): the first such object
    or list, or None when there is none."""
    decoder = json.JSONDecoder()
    for m in re.finditer(r"[\[{]", text):
        try:
            value, _ = decoder.raw_decode(text, m.start())
        except json.JSONDecodeError:
            continue
        try:
            calls = _calls_from_json_value(value)
        except _Malformed:
            continue
        if calls and all(("arguments" in _unwrap(v) or "parameters" in _unwrap(v)) for v in _as_list(value)):
            return calls
    return None


def _unwrap(v):
    if isinstance(v, dict) and isinstance(v.get("function"), dict):
        return v["function"]
    return v if isinstance(v, dict) else {}


def _as_list(value):
    if isinstance(value, dict) and isinstance(value.get("tool_calls"), list):
        return value["tool_calls"]
    return value if isinstance(value, list) else [value]


def _parse_text(raw: str) -> Parsed:
    text = _THINK.sub("", raw)
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
    fence = _FENCE.search(text)
    if fence:
        body = _strip_end_tokens(fence.group(2))
        if body.startswith(("{", "[")) or _CALL_START.match(body):
            return _found("fenced", _parse_body(body))
    embedded = _embedded_json_call(text)
    if embedded:
        return _found("json", embedded)
    return Parsed(NO_CALL, [], "text", "prose without a call")


def parse_tool_calls(tool_calls: list) -> Parsed:
    """OpenAI's structured `message.tool_calls` (arguments as a JSON string or an object)."""
    try:
        if not isinstance(tool_calls, list):
            raise _Malformed(f"tool_calls must be a list, got {type(tool_calls).__name__}")
        return _found("openai", [_call_from_obj(tc) for tc in tool_calls])
    except _Malformed as e:
        return _malformed("openai", str(e))


def parse_output(raw: str | None, tool_calls: list | None = None) -> Parsed:
    """Parse one model answer. Structured `tool_calls` (from an OpenAI-compatible server) win when present;
    otherwise the raw text is read. Never raises on any input text."""
    if tool_calls:
        return parse_tool_calls(tool_calls)
    if raw is None:
        return Parsed(NO_CALL, [], "text", "no output")
    if not isinstance(raw, str):
        return _malformed("text", f"raw output must be text, got {type(raw).__name__}")
    try:
        return _parse_text(raw)
    except _Malformed as e:
        return _malformed(_guess_format(raw), str(e))
    except RecursionError:
        return _malformed(_guess_format(raw), "nested too deeply")


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
