"""Chat messages as chat templates need them, from the rows a preference dataset stores.

    stored  {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {
             "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]}, and {"role": "user", ..., "tool_calls": null}
    clean   {"role": "assistant", "content": null, "tool_calls": [{"type": "function", "function": {
             "name": "get_weather", "arguments": {"city": "Paris"}}}]}, and {"role": "user", ...}

Arrow stores a column of messages as one struct type, so every message comes back with every key any message had
(`tool_calls: None` on a user turn) and arguments stay JSON strings. Templates need the messages as written:
Qwen's and Llama's render a string argument as a quoted JSON string, and Llama's treats any message with a
`tool_calls` key as a call. Training (distill.train_data) and the policy's scoring of pairs (data_gen.policy) both
render through this one function, so they see the same text.
"""

from __future__ import annotations

import json

from eval.io import DistillError


def clean_messages(messages: list[dict], where: str) -> list[dict]:
    """Keys set to None dropped (`content` kept: `content: null` is the OpenAI form of a call), tool-call
    arguments parsed into objects; invalid JSON arguments raise DistillError naming `where`."""
    out = []
    for message in messages:
        message = {k: v for k, v in message.items() if v is not None or k == "content"}
        if message.get("tool_calls"):
            calls = []
            for call in message["tool_calls"]:
                fn = dict(call.get("function") or call)
                if isinstance(fn.get("arguments"), str):
                    try:
                        fn["arguments"] = json.loads(fn["arguments"])
                    except json.JSONDecodeError as e:
                        raise DistillError(
                            f"{where}: tool-call arguments are not valid JSON ({e.msg}): "
                            f"{fn['arguments'][:80]!r}"
                        ) from None
                calls.append({**call, "function": fn} if "function" in call else fn)
            message["tool_calls"] = calls
        out.append(message)
    return out
