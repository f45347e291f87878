"""Our verifier against BFCL's own AST checker, on correct and perturbed answers for every BFCL entry of every
supported category. Deliberate differences are listed in DELIBERATE_DIFFERENCES and in the README."""

import json
from collections import Counter

import pytest

from data_gen.bfcl import SUPPORTED_CATEGORIES, convert_entry
from eval.bfcl_data import bfcl_data_dir
from eval.bfcl_reference import BfclChecker, perturbed_cases
from eval.tasks import task_from_dict
from eval.verify import verify

# (category kind, answer) -> (BFCL's verdict, ours). Each is also explained in the README.
DELIBERATE_DIFFERENCES = {
    "malformed answer to an irrelevance task": (True, False),
}


def _entries(category):
    data = bfcl_data_dir()
    entries = [json.loads(line) for line in open(data / f"BFCL_v4_{category}.json")]
    answers = {}
    if "irrelevance" not in category:
        answers = {a["id"]: a for a in map(json.loads, open(data / "possible_answer" / f"BFCL_v4_{category}.json"))}
    return [(e, answers.get(e["id"])) for e in entries]


@pytest.fixture(scope="module")
def checker():
    return BfclChecker()


@pytest.mark.parametrize("category", SUPPORTED_CATEGORIES)
def test_same_verdict_as_bfcl_checker(category, checker):
    compared, labels, verdicts = 0, Counter(), Counter()
    disagreements = []
    for entry, answer in _entries(category):
        task = task_from_dict(convert_entry(entry, answer, category, "test"))
        for case in perturbed_cases(entry, answer):
            # both sides get their own copy: BFCL's checker mutates nothing we rely on, but must not see ours
            ref = checker.correct(json.loads(json.dumps(entry)), answer, category, json.loads(json.dumps(case.calls)))
            ours = verify(task, {"task_id": entry["id"], "model": "m", "sample": 0, "tool_calls": case.calls})
            compared += 1
            labels[case.label.split(":")[0]] += 1
            verdicts[ref] += 1
            if ours["correct"] != ref:
                disagreements.append((entry["id"], case.label, ref, ours["error"], ours["detail"]))
    assert compared > 0
    assert verdicts[True] > 0 and verdicts[False] > 0, "the cases must include right and wrong answers"
    if "irrelevance" not in category:
        for label in ("gold", "wrong_value", "wrong_type", "drop_arg", "hallucinated_function", "duplicated_call"):
            assert labels[label] > 0, f"no {label} case generated for {category}"
    assert disagreements == [], f"{len(disagreements)}/{compared} disagree, e.g. {disagreements[:5]}"


def test_deliberate_difference_malformed_on_irrelevance(checker):
    entry, answer = _entries("irrelevance")[0]
    task = task_from_dict(convert_entry(entry, answer, "irrelevance", "test"))
    raw = '<tool_call>{"name": "determine_body_mass_index", "arguments": {"weight": 70,'
    ours = verify(task, {"task_id": entry["id"], "model": "m", "raw": raw})
    # BFCL's runner counts any output its decoder cannot read as a correct abstention on irrelevance tasks.
    bfcl_says, we_say = DELIBERATE_DIFFERENCES["malformed answer to an irrelevance task"]
    assert (ours["correct"], ours["error"]) == (we_say, "malformed")
    assert bfcl_says is True
    # ...while a clean abstention is right for both
    clean = verify(task, {"task_id": entry["id"], "model": "m", "raw": "I cannot compute that with these tools."})
    assert clean["correct"] is True and checker.correct(entry, None, "irrelevance", []) is True


def test_string_normalisation_and_int_for_float_are_accepted():
    entry, answer = next((e, a) for e, a in _entries("simple_python") if e["id"] == "simple_python_0")
    task = task_from_dict(convert_entry(entry, answer, "simple_python", "test"))
    trace = {"task_id": entry["id"], "model": "m", "raw": "[calculate_triangle_area(base=10, height=5, unit='UNITS')]"}
    assert verify(task, trace)["correct"] is True
    trace["raw"] = "[calculate_triangle_area(base=10.0, height=5)]"  # float for an integer: BFCL's type error
    v = verify(task, trace)
    assert v["correct"] is False and v["error"] == "schema_violation"
