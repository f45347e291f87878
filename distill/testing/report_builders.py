"""Eval reports with chosen per-category outcomes, made by the real verifier (eval.report.score_traces) from
scripted traces, for the compare, admission and publish tests.

    tasks = write_tasks(tmp_path / "tasks.jsonl", {"simple": 10, "irrelevance": 4})
    folder = build_report(tmp_path / "student", tasks, "m", {"simple": ["ok"] * 9 + ["wrong_value"], "irrelevance": ["ok"] * 4})

Outcomes per task, in order: "ok" (the expected call, or prose on an irrelevance task), "wrong_value", "schema"
(an argument of the wrong type: schema-invalid), "no_call" (prose), "malformed" (a broken <tool_call>),
"unexpected_call" (a call on an irrelevance task).
"""

from __future__ import annotations

import json
from pathlib import Path

TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather forecast for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}


def write_tasks(path: Path, counts: dict[str, int], source: str = "bfcl-eval==2026.3.23") -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for cat, n in counts.items():
            for i in range(n):
                expected = [] if cat.startswith("irrelevance") else [
                    {"name": "get_weather", "arguments": {"city": [f"City{i}"], "days": [3, ""]}}]
                f.write(json.dumps({
                    "id": f"{cat}_{i}", "category": cat, "source": source,
                    "messages": [{"role": "user", "content": f"Weather in City{i} for 3 days?"}],
                    "tools": [TOOL], "expected": expected,
                }) + "\n")
    return path


def _raw(outcome: str, i: int, irrelevance: bool) -> str:
    call = lambda args: "<tool_call>" + json.dumps({"name": "get_weather", "arguments": args}) + "</tool_call>"  # noqa: E731
    if outcome == "ok":
        return "I cannot help with that." if irrelevance else call({"city": f"City{i}", "days": 3})
    return {
        "wrong_value": call({"city": "Nowhere", "days": 3}),
        "schema": call({"city": f"City{i}", "days": "three"}),
        "no_call": "It will be sunny.",
        "malformed": '<tool_call>{"name": "get_weather", "arguments": {"city": </tool_call>',
        "unexpected_call": call({"city": "Paris"}),
    }[outcome]


def write_traces(path: Path, model: str, outcomes: dict[str, list[str]], latency_s: float = 0.5) -> Path:
    with open(path, "w", encoding="utf-8") as f:
        for cat, outs in outcomes.items():
            for i, outcome in enumerate(outs):
                f.write(json.dumps({
                    "task_id": f"{cat}_{i}", "model": model, "sample": 0,
                    "raw": _raw(outcome, i, cat.startswith("irrelevance")),
                    "latency_s": latency_s * (1 + i % 3), "completion_tokens": 20,
                }) + "\n")
    return path


def build_report(folder: Path, tasks: Path, model: str, outcomes: dict[str, list[str]], *, adapter: str | None = None,
                 extra: dict | None = None) -> Path:
    """Score scripted traces into `folder` (report.json, verdicts.jsonl, summary.md; no plots). Returns folder."""
    from eval.report import score_traces

    folder.mkdir(parents=True, exist_ok=True)
    traces = write_traces(folder / "traces.jsonl", model, outcomes)
    score_traces(tasks, [traces], folder, model=model, adapter=adapter, plots=False, extra=extra)
    return folder
