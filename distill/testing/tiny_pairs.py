"""A small preference dataset in distill's format (docs/tasks.md), for tests and the debug
recipe, until `distill pairs` output is at hand.

    from distill.testing.tiny_pairs import build_tiny_pairs
    build_tiny_pairs(tmp_path / "pairs")      # DatasetDict(train, test) via save_to_disk, plus a README.md card

    python -m distill.testing.tiny_pairs recipes/debug/tiny   # rebuild the debug recipe's model/ and pairs/ folders

Rows mix single and parallel calls, prose and malformed rejections, optional system turns and different tools per
row, so Arrow's struct merging and chat-template edge cases show up as they would in real data.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

TOOLS = {
    "get_weather": {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather for a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["city"],
            },
        },
    },
    "calculate_area": {
        "type": "function",
        "function": {
            "name": "calculate_area",
            "description": "Area of a triangle",
            "parameters": {
                "type": "object",
                "properties": {"base": {"type": "integer"}, "height": {"type": "number"}},
                "required": ["base", "height"],
            },
        },
    },
    "convert_currency": {
        "type": "function",
        "function": {
            "name": "convert_currency",
            "description": "Convert an amount between currencies",
            "parameters": {
                "type": "object",
                "properties": {
                    "amount": {"type": "number"},
                    "from": {"type": "string"},
                    "to": {"type": "string"},
                },
                "required": ["amount", "from", "to"],
            },
        },
    },
}
CITIES = ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Quito"]

CARD = """---
teacher_model: Qwen/Qwen2.5-72B-Instruct
license: apache-2.0
---
# tiny preference pairs

Built by distill/testing/tiny_pairs.py for distill's tests and recipes/debug. Teacher model: Qwen/Qwen2.5-72B-Instruct
(nominal: the rows are generated, not sampled).
"""


def _call(*calls) -> list[dict]:
    return [
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
                for name, args in calls
            ],
        }
    ]


def _text(content: str) -> list[dict]:
    return [{"role": "assistant", "content": content}]


def make_row(i: int, rng: random.Random) -> dict:
    kind = i % 4
    system = (
        [{"role": "system", "content": "You are a careful assistant that calls tools."}] if i % 3 == 0 else []
    )
    if kind == 0:
        city = rng.choice(CITIES)
        prompt = [{"role": "user", "content": f"What's the weather in {city} in celsius?"}]
        chosen = _call(("get_weather", {"city": city, "unit": "celsius"}))
        rejected, source, error = _text(f"The weather in {city} is sunny."), "teacher", "no_call"
        tools = ["get_weather", "convert_currency"]
    elif kind == 1:
        base, height = rng.randint(2, 30), rng.randint(2, 30)
        prompt = [
            {"role": "user", "content": f"Find the area of a triangle with base {base} and height {height}."}
        ]
        chosen = _call(("calculate_area", {"base": base, "height": height}))
        rejected, source, error = _call(("calculate_area", {"base": base})), "synthetic", "schema_violation"
        tools = ["calculate_area"]
    elif kind == 2:
        a, b = rng.sample(CITIES, 2)
        prompt = [{"role": "user", "content": f"Weather in {a} and in {b}, please."}]
        chosen = _call(("get_weather", {"city": a}), ("get_weather", {"city": b}))
        rejected, source, error = _call(("get_weather", {"city": a})), "student", "wrong_count"
        tools = ["get_weather"]
    else:
        amount = rng.randint(1, 500)
        prompt = [{"role": "user", "content": f"Convert {amount} USD to EUR."}]
        chosen = _call(("convert_currency", {"amount": amount, "from": "USD", "to": "EUR"}))
        rejected = _text('<tool_call>\n{"name": "convert_currency", "arguments": {"amount": ' + str(amount))
        source, error = "synthetic", "malformed"
        tools = ["convert_currency", "calculate_area"]
    return {
        "prompt": system + prompt,
        "chosen": chosen,
        "rejected": rejected,
        "tools": json.dumps([TOOLS[t] for t in tools]),
        "task_id": f"tiny_{i}",
        "chosen_source": "teacher",
        "rejected_source": source,
        "rejected_error": error,
    }


def build_tiny_pairs(path: str | Path, *, n_train: int = 24, n_test: int = 8, seed: int = 0) -> Path:
    from datasets import Dataset, DatasetDict

    rng = random.Random(seed)
    rows = [make_row(i, rng) for i in range(n_train + n_test)]
    path = Path(path)
    DatasetDict(train=Dataset.from_list(rows[:n_train]), test=Dataset.from_list(rows[n_train:])).save_to_disk(
        str(path)
    )
    (path / "README.md").write_text(CARD)
    return path


if __name__ == "__main__":
    from distill.testing.tiny_model import build_tiny_model

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "recipes/debug/tiny")
    build_tiny_model(out / "model")
    build_tiny_pairs(out / "pairs")
    print(f"wrote {out}/model and {out}/pairs")
