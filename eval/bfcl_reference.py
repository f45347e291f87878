"""BFCL's own AST checker as a reference, and the cases we compare our verifier with it on.

    checker = BfclChecker()                      # needs `pip install --no-deps bfcl-eval`
    for case in perturbed_cases(entry, answer):  # correct answers and typical mistakes, as calls
        checker.correct(entry, answer, category, case.calls) == verify(task, trace)["correct"]

Used by tests/test_bfcl_agreement.py and benchmarks/verify_speed.py. Importing BFCL's checker normally imports
`bfcl_eval.constants.model_config`, which imports every vendor SDK; a stand-in module with the one mapping the
checker reads (`underscore_to_dot`, False: names are compared as written) is put in its place first.
"""

from __future__ import annotations

import collections
import copy
import random
import sys
import types
from dataclasses import dataclass


class _ModelConfig:
    underscore_to_dot = False


def load_bfcl_ast_checker():
    """(ast_checker, Language, is_empty_output) from the installed bfcl-eval, without its vendor SDKs."""
    name = "bfcl_eval.constants.model_config"
    if name not in sys.modules:
        stand_in = types.ModuleType(name)
        stand_in.MODEL_CONFIG_MAPPING = collections.defaultdict(_ModelConfig)
        sys.modules[name] = stand_in
    from bfcl_eval.constants.enums import Language
    from bfcl_eval.eval_checker.ast_eval.ast_checker import ast_checker

    def is_empty_output(decoded) -> bool:
        # bfcl_eval.utils.is_empty_output, inlined: importing bfcl_eval.utils pulls the vendor SDKs back in.
        if not isinstance(decoded, list) or any(not isinstance(i, dict) or len(i) != 1 for i in decoded):
            return True
        return len(decoded) == 0

    return ast_checker, Language, is_empty_output


class BfclChecker:
    """BFCL's verdict for decoded calls, as its eval runner computes it for single-turn categories."""

    MODEL = "distill-reference"

    def __init__(self):
        self.ast_checker, self.language, self.is_empty_output = load_bfcl_ast_checker()

    def correct(self, entry: dict, answer: dict | None, category: str, calls: list[dict]) -> bool:
        decoded = [{c["name"]: c["arguments"]} for c in calls]
        if "irrelevance" in category:
            return self.is_empty_output(decoded)
        result = self.ast_checker(
            entry["function"], decoded, answer["ground_truth"], self.language.PYTHON, category, self.MODEL
        )
        return bool(result["valid"])


@dataclass
class Case:
    label: str
    calls: list[dict]


_HALLUCINATED = "lookup_external_record"


def _pick(values: list, i: int = 0):
    real = [v for v in values if v != ""]
    return copy.deepcopy(real[i % len(real)]) if real else None


def gold_calls(answer: dict, alt: int = 0, with_optional: bool = True) -> list[dict]:
    calls = []
    for gt in answer["ground_truth"]:
        ((name, params),) = gt.items()
        args = {}
        for p, values in params.items():
            optional = "" in values
            v = _pick(values, alt)
            if v is None or (optional and not with_optional):
                continue
            args[p] = v
        calls.append({"name": name, "arguments": args})
    return calls


def _wrong_value(v, rng: random.Random):
    if isinstance(v, bool):
        return not v
    if isinstance(v, int):
        return v + rng.choice([1, 7, -3])
    if isinstance(v, float):
        return v + 1.5
    if isinstance(v, str):
        return v + " extra" if v else "unexpected"
    if isinstance(v, list):
        return list(reversed(v)) + ["zz"] if v else ["zz"]
    if isinstance(v, dict):
        return {**v, "unexpected_key": 1}
    return "unexpected"


def _wrong_type(v):
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(v)
    if isinstance(v, str):
        return 12345
    if isinstance(v, list):
        return ",".join(map(str, v))
    return str(v)


def _string_variant(v: str) -> str:
    # Variants BFCL's normalisation accepts: case, spaces and the punctuation it strips.
    return v.upper().replace(" ", "  ").replace(",", " ,") if v else v


def perturbed_cases(entry: dict, answer: dict | None, seed: int = 0) -> list[Case]:
    """Correct answers and typical mistakes for one BFCL entry (deterministic for a seed)."""
    rng = random.Random(f"{entry['id']}:{seed}")
    functions = entry["function"]
    if answer is None:  # irrelevance: any call is wrong, no call is right
        if not functions:
            return [Case("no_call", []), Case("call_hallucinated", [{"name": _HALLUCINATED, "arguments": {}}])]
        f = functions[0]
        props = f["parameters"].get("properties", {})
        args = {p: "x" for p in f["parameters"].get("required", [])}
        cases = [Case("no_call", []), Case("call_listed_tool", [{"name": f["name"], "arguments": args}])]
        cases.append(Case("call_hallucinated", [{"name": _HALLUCINATED, "arguments": {}}]))
        if props:
            p = next(iter(props))
            cases.append(Case("call_with_one_arg", [{"name": f["name"], "arguments": {p: "value"}}]))
        return cases

    gold = gold_calls(answer)
    cases = [Case("gold", gold), Case("gold_no_optional", gold_calls(answer, with_optional=False))]
    cases.append(Case("gold_alt_values", gold_calls(answer, alt=1)))
    names = [f["name"] for f in functions]

    def mutate(label, fn):
        calls = copy.deepcopy(gold)
        if fn(calls) is not False:
            cases.append(Case(label, calls))

    for ci in range(len(gold)):
        call = gold[ci]
        arg_names = list(call["arguments"])
        for p in arg_names[:3]:
            v = call["arguments"][p]

            def set_value(calls, p=p, ci=ci, value=None, fn=None):
                calls[ci]["arguments"][p] = fn(calls[ci]["arguments"][p]) if fn else value

            mutate(f"wrong_value:{p}", lambda c, p=p, ci=ci: set_value(c, p, ci, fn=lambda x: _wrong_value(x, rng)))
            mutate(f"wrong_type:{p}", lambda c, p=p, ci=ci: set_value(c, p, ci, fn=_wrong_type))
            mutate(f"drop_arg:{p}", lambda c, p=p, ci=ci: c[ci]["arguments"].pop(p))
            mutate(f"null_value:{p}", lambda c, p=p, ci=ci: set_value(c, p, ci, value=None))
            if isinstance(v, dict) and v:
                k = next(iter(v))
                mutate(f"nested_wrong_value:{p}", lambda c, p=p, ci=ci, k=k, v=v: c[ci]["arguments"][p].__setitem__(k, _wrong_value(v[k], rng)))
                mutate(f"nested_drop_key:{p}", lambda c, p=p, ci=ci, k=k: c[ci]["arguments"][p].pop(k))
            if isinstance(v, bool):
                mutate(f"int_for_bool:{p}", lambda c, p=p, ci=ci: set_value(c, p, ci, fn=int))
            if isinstance(v, str) and v:
                mutate(f"string_variant:{p}", lambda c, p=p, ci=ci: set_value(c, p, ci, fn=_string_variant))
            if isinstance(v, float) and v.is_integer():
                mutate(f"int_for_float:{p}", lambda c, p=p, ci=ci: set_value(c, p, ci, fn=int))
            if isinstance(v, int) and not isinstance(v, bool):
                mutate(f"float_for_int:{p}", lambda c, p=p, ci=ci: set_value(c, p, ci, fn=float))
            if isinstance(v, list) and len(v) > 1:
                mutate(f"list_reordered:{p}", lambda c, p=p, ci=ci: set_value(c, p, ci, fn=lambda x: list(reversed(x))))
                mutate(f"tuple_like:{p}", lambda c, p=p, ci=ci: set_value(c, p, ci, fn=list))
        mutate(f"extra_arg:{ci}", lambda c, ci=ci: c[ci]["arguments"].__setitem__("verbose_mode", True))
        fn_desc = next((f for f in functions if f["name"] == call["name"]), None)
        if fn_desc:
            unused = [p for p in fn_desc["parameters"].get("properties", {}) if p not in call["arguments"]]
            if unused:
                p = unused[0]
                ptype = fn_desc["parameters"]["properties"][p].get("type")
                filler = {"integer": 1, "float": 1.0, "boolean": True, "array": [], "dict": {}}.get(ptype, "x")
                mutate(f"unlisted_optional_arg:{p}", lambda c, ci=ci, p=p, v=filler: c[ci]["arguments"].__setitem__(p, v))
        mutate(f"hallucinated_function:{ci}", lambda c, ci=ci: c[ci].__setitem__("name", _HALLUCINATED))
        others = [n for n in names if n != call["name"]]
        if others:
            mutate(f"other_listed_function:{ci}", lambda c, ci=ci, o=others[0]: c[ci].__setitem__("name", o))
    if len(gold) > 1:
        mutate("reordered", lambda c: c.reverse())
        mutate("dropped_call", lambda c: c.pop())
    mutate("duplicated_call", lambda c: c.append(copy.deepcopy(c[0])))
    cases.append(Case("no_call", []))
    return cases


def reference_traces(tasks_path: str, model: str = "bfcl-reference") -> tuple[list[dict], int, int]:
    """Traces for every BFCL task in a tasks file: BFCL's answer and typical mistakes, each rendered as raw
    output in a rotating format (Hermes, Python, JSON...). Returns (traces, cases, cases where our verdict equals
    BFCL's checker). Lets a user see the verifier at work, and check it against BFCL, on their own machine."""
    import json

    from eval.bfcl_data import bfcl_data_dir
    from eval.parse import render
    from eval.tasks import load_tasks
    from eval.verify import verify

    tasks = load_tasks(tasks_path)
    data = bfcl_data_dir()
    checker = BfclChecker()
    by_cat: dict[str, tuple[dict, dict]] = {}
    traces, agree = [], 0
    text_formats = ("hermes", "python", "json", "fenced", "llama3", "mistral")
    for task in tasks.values():
        if task.category not in by_cat:
            entries = {e["id"]: e for e in map(json.loads, open(data / f"BFCL_v4_{task.category}.json"))}
            answers = {}
            if "irrelevance" not in task.category:
                answers = {a["id"]: a for a in map(json.loads, open(data / "possible_answer" / f"BFCL_v4_{task.category}.json"))}
            by_cat[task.category] = (entries, answers)
        entries, answers = by_cat[task.category]
        entry, answer = entries[task.id], answers.get(task.id)
        for sample, case in enumerate(perturbed_cases(entry, answer)):
            fmt = text_formats[(len(traces)) % len(text_formats)]
            raw = render(case.calls, fmt) if case.calls else "None of the available functions can do this."
            trace = {"task_id": task.id, "model": model, "sample": sample, "raw": raw, "case": case.label}
            agree += checker.correct(entry, answer, task.category, case.calls) == verify(task, trace)["correct"]
            traces.append(trace)
    return traces, len(traces), agree


def main(argv=None) -> int:
    import argparse

    from eval.io import DistillError, write_jsonl

    ap = argparse.ArgumentParser(
        prog="python -m eval.bfcl_reference",
        description="Write reference traces for the BFCL tasks of a tasks file (BFCL's answers and typical "
        "mistakes as raw model output) and report how often distill's verdict equals BFCL's own checker.",
    )
    ap.add_argument("--tasks", required=True, help="tasks .jsonl written by `distill import bfcl`")
    ap.add_argument("--out", required=True, help="output traces .jsonl")
    args = ap.parse_args(argv)
    try:
        traces, n, agree = reference_traces(args.tasks)
    except DistillError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyError as e:
        print(f"error: task {e} is not in the installed BFCL data (only `distill import bfcl` tasks work here)", file=sys.stderr)
        return 2
    write_jsonl(args.out, traces)
    print(f"wrote {n} reference traces to {args.out}; distill's verdict equals BFCL's checker on {agree}/{n} ({100 * agree / n:.2f}%)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
