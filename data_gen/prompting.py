"""Prompts for models and servers that cannot take `tools` themselves.

    with_tools_in_prompt(messages, tools)            # chat messages whose system turn lists the tools
    completion_prompt(messages, tools, "python")     # a few-shot text prompt for a base model (no chat template)
    render_prompt(tokenizer, messages, tools)        # what the hf and vllm backends feed the model

Either way the model is asked to answer in a format `eval.parse.parse_output` reads: Hermes
`<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (style "hermes") or a Python list of calls
`[get_weather(city='Paris')]` (style "python", BFCL's prompt format). Tools are listed as their OpenAI JSON,
which is what chat templates with tool support show the model too.
"""

from __future__ import annotations

import json
from pathlib import Path

from eval.io import DistillError

STYLES = ("hermes", "python")

# A completion prompt is a run of "### Tools / ### Request / ### Answer" sections; the model's answer ends
# where it starts the next section, so generation stops on this string and it is cut from the output.
STOP = "\n###"

_INSTRUCTIONS = {
    "hermes": (
        "You may call one or more functions to answer the request. The available functions are listed as JSON. "
        "For each call, write a JSON object with the function name and arguments inside <tool_call></tool_call> "
        'tags:\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>\n'
        "If none of the functions fits the request, answer in plain text without a call."
    ),
    "python": (
        "You may call one or more functions to answer the request. The available functions are listed as JSON. "
        "Write the calls as a Python list and nothing else: [func_name1(param1=value1, param2=value2), "
        "func_name2(param=value)]. If none of the functions fits the request, answer in plain text without "
        "a call."
    ),
}


def _function(tool: dict) -> dict:
    return tool.get("function", tool) if isinstance(tool, dict) else tool


def _tool_lines(tools: list[dict]) -> str:
    return "\n".join(json.dumps(_function(t), ensure_ascii=False) for t in tools)


def _render_calls(calls: list[dict], style: str) -> str:
    if style == "hermes":
        return "\n".join(
            "<tool_call>\n" + json.dumps({"name": c["name"], "arguments": c["arguments"]}) + "\n</tool_call>"
            for c in calls
        )
    # repr() of str/int/float/bool/list/dict literals is valid Python, which the parser reads with ast.
    return "[" + ", ".join(
        c["name"] + "(" + ", ".join(f"{k}={v!r}" for k, v in c["arguments"].items()) + ")" for c in calls
    ) + "]"


def tools_system_prompt(tools: list[dict], style: str = "hermes") -> str:
    """The tool list and answer-format instructions, for a system message."""
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; one of {', '.join(STYLES)}")
    return f"# Tools\n\n{_INSTRUCTIONS[style]}\n\n<tools>\n{_tool_lines(tools)}\n</tools>"


def with_tools_in_prompt(messages: list[dict], tools: list[dict], style: str = "hermes") -> list[dict]:
    """The messages with the tools rendered into the system turn (appended to an existing system message), for
    servers that reject or ignore the `tools` field. Without tools the messages are returned unchanged."""
    if not tools:
        return list(messages)
    block = tools_system_prompt(tools, style)
    if messages and messages[0].get("role") == "system":
        first = dict(messages[0])
        first["content"] = f"{first.get('content') or ''}\n\n{block}".lstrip()
        return [first, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


# Two worked examples, unrelated to any benchmark's functions: one call with an enum argument, then two
# parallel calls, so a base model sees the format, argument typing and several calls in one answer.
_SHOTS = [
    {
        "tools": [
            {
                "name": "get_stock_price",
                "description": "Latest trade price of a listed stock.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "symbol": {"type": "string", "description": "ticker symbol"},
                        "exchange": {"type": "string", "enum": ["NASDAQ", "NYSE"]},
                    },
                    "required": ["symbol"],
                },
            }
        ],
        "request": "What is Apple trading at on the NASDAQ right now?",
        "calls": [{"name": "get_stock_price", "arguments": {"symbol": "AAPL", "exchange": "NASDAQ"}}],
    },
    {
        "tools": [
            {
                "name": "convert_currency",
                "description": "Convert an amount between currencies.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "amount": {"type": "number"},
                        "from_currency": {"type": "string"},
                        "to_currency": {"type": "string"},
                    },
                    "required": ["amount", "from_currency", "to_currency"],
                },
            },
            {
                "name": "get_local_time",
                "description": "Current local time in a city.",
                "parameters": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            },
        ],
        "request": "Convert 250 euros to US dollars, and what time is it in Tokyo?",
        "calls": [
            {"name": "convert_currency", "arguments": {"amount": 250, "from_currency": "EUR", "to_currency": "USD"}},
            {"name": "get_local_time", "arguments": {"city": "Tokyo"}},
        ],
    },
]


def _request_text(messages: list[dict]) -> str:
    """The conversation as plain text: a lone user turn as itself, longer ones with role labels."""
    if len(messages) == 1 and messages[0].get("role") == "user":
        return str(messages[0].get("content") or "")
    lines = []
    for m in messages:
        content = m.get("content")
        if not isinstance(content, str):
            content = json.dumps(content, ensure_ascii=False)
        if m.get("tool_calls"):
            content = (content or "") + json.dumps(m["tool_calls"], ensure_ascii=False)
        lines.append(f"{m.get('role', 'user')}: {content}")
    return "\n".join(lines)


def completion_prompt(messages: list[dict], tools: list[dict], style: str = "hermes") -> str:
    """A few-shot text prompt for a base model without a chat template; the answer starts after the last
    '### Answer' and ends at STOP."""
    if style not in STYLES:
        raise ValueError(f"unknown prompt style {style!r}; one of {', '.join(STYLES)}")
    parts = [_INSTRUCTIONS[style], ""]
    for shot in _SHOTS:
        parts += [
            "### Tools",
            _tool_lines(shot["tools"]),
            "### Request",
            shot["request"],
            "### Answer",
            _render_calls(shot["calls"], style),
            "",
        ]
    parts += ["### Tools", _tool_lines(tools) if tools else "(none)", "### Request", _request_text(messages),
              "### Answer", ""]
    return "\n".join(parts)


def cut_at_stop(text: str) -> tuple[str, bool]:
    """Cut a completion-prompt answer where the model starts the next section; (text, whether it stopped)."""
    i = text.find(STOP)
    if i < 0:
        return text, False
    return text[:i].rstrip(), True


def load_chat_template(tokenizer, spec: str | None) -> None:
    """Replace the tokenizer's chat template with `spec` (--chat-template): a shipped template's name or a Jinja
    file."""
    if spec:
        tokenizer.chat_template = resolve_chat_template(spec)[0]


def render_prompt(tokenizer, messages: list[dict], tools: list[dict], style: str = "hermes") -> tuple[str, bool]:
    """(prompt text, whether it is a completion prompt). The model's own chat template with `tools` when it has
    one; else the few-shot completion prompt. The text of a chat template already holds its special tokens
    (BOS and the like), so callers tokenize it with add_special_tokens=False, and a completion prompt with
    True (the model's BOS)."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(
            messages, tools=tools or None, add_generation_prompt=True, tokenize=False
        )
        return text, False
    return completion_prompt(messages, tools, style), True


TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"


def resolve_chat_template(spec: str) -> tuple[str, str]:
    """(template text, where it came from) for a chat template given by name (one shipped with distill:
    `hermes_tool`, `gemma3_tool`) or as a Jinja file path. Recipes' `chat_template` and every `--chat-template`
    flag go through here."""
    shipped = TEMPLATES_DIR / f"{spec}.jinja"
    path = shipped if shipped.is_file() else Path(spec)
    if not path.is_file():
        names = sorted(p.stem for p in TEMPLATES_DIR.glob("*.jinja"))
        raise DistillError(
            f"chat_template: {spec!r} is neither a template shipped with distill ({', '.join(names)}) nor a file"
        )
    return path.read_text(encoding="utf-8"), str(path)
