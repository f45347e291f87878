"""Match calls against a task's expected calls with the Berkeley Function Calling Leaderboard's AST rules.

    expected: [{"name": "spotify.play", "arguments": {"artist": ["Taylor Swift"], "duration": [20]}},
               {"name": "spotify.play", "arguments": {"artist": ["Maroon 5"], "duration": [15]}}]
    calls:    [{"name": "spotify.play", "arguments": {"artist": "maroon 5", "duration": 15}},
               {"name": "spotify.play", "arguments": {"artist": "Taylor Swift", "duration": 20}}]
    match_calls(compile_expected(expected, specs), calls) -> ("ok", "")

A faithful port of `bfcl_eval/eval_checker/ast_eval/ast_checker.py` (Python rules): required arguments, no
argument outside the schema or the answer, exact Python types (int accepted for a "number", a value whose type
equals the answer's counts as a variable), strings compared after BFCL's normalisation (spaces and `,./-_*^`
removed, lower case, ' -> "), lists and dicts element-wise with the same normalisation, optional arguments
(`""` among the acceptable values), and parallel calls matched in any order by BFCL's greedy search. It works on
our task format instead of BFCL's, and everything that depends only on the task (normalised answers, Python
types per argument) is computed once in `compile_expected` instead of on every check. One rule for every
category: the number of calls must equal the number expected (BFCL's simple, multiple and parallel checkers
reduce to this on BFCL's data, where simple and multiple tasks expect exactly one call).
"""

from __future__ import annotations

from dataclasses import dataclass

from eval.parse import short_repr
from eval.schema import ToolSpec

# Failure kinds, in BFCL's vocabulary (eval/verify.py maps them onto distill's error taxonomy).
OK = "ok"
WRONG_COUNT = "wrong_count"
WRONG_NAME = "wrong_func_name"
MISSING_REQUIRED = "missing_required"
UNKNOWN_PARAM = "unknown_param"  # not in the tool's schema
UNEXPECTED_PARAM = "unexpected_param"  # in the schema, but not among the expected arguments
TYPE_ERROR = "type_error"
VALUE_ERROR = "value_error"
MISSING_OPTIONAL = "missing_optional"

_STRIP = str.maketrans("", "", " ,./-_*^")


def standardize(s: str) -> str:
    """BFCL's string normalisation: drop spaces and ,./-_*^ , lower-case, single quotes to double."""
    return s.translate(_STRIP).lower().replace("'", '"')


def _std(v):
    return standardize(v) if type(v) is str else v


@dataclass(frozen=True)
class _Param:
    answers: list  # acceptable values as given ("" = may be left out)
    optional: bool
    answer_type: type | None  # type of the first answer that is not "" (BFCL's "variable" rule)
    std_strings: list  # normalised string answers
    std_lists: list  # each answer normalised element-wise, for list values
    shown: str  # the answers as a failure's detail quotes them, cut short
    variable: bool  # BFCL's is_variable for a value of the schema's own type (answers of another type)


@dataclass(frozen=True)
class _ExpectedCall:
    name: str
    spec: ToolSpec
    params: dict[str, _Param]
    # the spec's fields the check reads on every call, held here to save attribute lookups on the hot path
    required: tuple[str, ...]
    properties: dict
    types: dict


def _compile_param(answers: list, want: type) -> _Param:
    std_lists = []
    for a in answers:
        # BFCL iterates each answer by index: "" becomes [], so an empty list matches an optional argument.
        if isinstance(a, (list, str)):
            std_lists.append([_std(x) for x in a])
    answer_type = next((type(a) for a in answers if a != ""), None)
    return _Param(
        answers=answers,
        optional="" in answers,
        answer_type=answer_type,
        std_strings=[standardize(a) for a in answers if type(a) is str],
        std_lists=std_lists,
        shown=short_repr(answers, 120),
        variable=answer_type is not None and answer_type is not want,
    )


def compile_expected(expected: list[dict], specs: dict[str, ToolSpec]) -> list[_ExpectedCall]:
    return [
        _ExpectedCall(
            name=c["name"],
            spec=specs[c["name"]],
            params={p: _compile_param(a, _want(specs[c["name"]], p)) for p, a in c.get("arguments", {}).items()},
            required=specs[c["name"]].required,
            properties=specs[c["name"]].properties,
            types=specs[c["name"]].param_types,
        )
        for c in expected
    ]


def _want(spec: ToolSpec, param: str) -> type:
    pt = spec.param_types.get(param)
    return pt.py if pt is not None else str


def _type_ok(value, answers: list, answer_type, want: type, item: type | None) -> tuple[bool, bool]:
    """BFCL's type_checker: (valid, is_variable)."""
    is_variable = answer_type is not None and answer_type is not want
    if type(value) is want:
        if item is None:
            return True, is_variable
        for answer in answers:
            if type(answer) is list:
                item_type = next((type(a) for a in answer if a != ""), None)
                if not all(_type_ok(v, answer, item_type, item, None)[0] for v in value):
                    continue
            return True, is_variable
        return False, is_variable
    if answer_type is not None and type(value) is answer_type:
        return True, True
    return False, is_variable


def _dict_ok(value: dict, answers: list) -> bool:
    for answer in answers:
        if answer == "" or not isinstance(answer, dict):
            continue
        ok = True
        for k, v in value.items():
            if k not in answer or _std(v) not in [_std(a) for a in answer[k]]:
                ok = False
                break
        if ok and all(k in value or "" in vals for k, vals in answer.items()):
            return True
    return False


def _list_of_dicts_ok(value: list, answers: list) -> bool:
    for answer in answers:
        if not isinstance(answer, (list, str)) or len(value) != len(answer):
            continue
        if all(isinstance(a, dict) and isinstance(v, dict) and _dict_ok(v, [a]) for v, a in zip(value, answer, strict=True)):
            return True
    return False


def check_call(exp: _ExpectedCall, call: dict) -> tuple[str, str]:
    """BFCL's simple_function_checker for one output call against one expected call: (kind, detail)."""
    if call["name"] != exp.name:
        return WRONG_NAME, f"expected a call to {exp.name!r}, got {short_repr(call['name'])}"
    args = call["arguments"]
    for p in exp.required:
        if p not in args:
            return MISSING_REQUIRED, f"{exp.name}: missing required argument {p!r}"
    props, types, params = exp.properties, exp.types, exp.params
    for p, value in args.items():
        if p not in props:
            return UNKNOWN_PARAM, f"{exp.name}: argument {short_repr(p)} is not in the tool's schema"
        if p not in params:
            return UNEXPECTED_PARAM, f"{exp.name}: unexpected argument {p!r}"
        pt = types[p]
        param = params[p]
        if pt.number and type(value) is int:
            try:
                value = float(value)
            except OverflowError:  # past 1.8e308: no float answer can equal it (BFCL's float() would raise)
                return VALUE_ERROR, f"{exp.name}: argument {p!r} = {short_repr(value)} is out of a float's range"
        if type(value) is pt.py and pt.item is None:  # _type_ok's first case, inline: most arguments take it
            valid, is_variable = True, param.variable
        else:
            valid, is_variable = _type_ok(value, param.answers, param.answer_type, pt.py, pt.item)
        if not valid:
            return TYPE_ERROR, f"{exp.name}: argument {p!r} has type {type(value).__name__}, expected {pt.py.__name__}"
        if not is_variable:
            want = pt.py
            if want is dict:
                ok = _dict_ok(value, param.answers)
            elif want is list and pt.item is dict:
                ok = _list_of_dicts_ok(value, param.answers)
            elif want is str:
                ok = standardize(value) in param.std_strings
            elif want is list:
                ok = [_std(v) for v in value] in param.std_lists
            else:
                ok = value in param.answers
        else:
            ok = value in param.answers
        if not ok:
            return VALUE_ERROR, f"{exp.name}: argument {p!r} = {short_repr(value)} is not one of {param.shown}"
    for p, param in params.items():
        if not param.optional and p not in args:
            return MISSING_OPTIONAL, f"{exp.name}: argument {p!r} is expected but missing"
    return OK, ""


def match_calls(expected: list[_ExpectedCall], calls: list[dict]) -> tuple[str, str]:
    """All expected calls matched by the output calls, in any order (BFCL's greedy no-order search)."""
    if len(calls) != len(expected):
        return WRONG_COUNT, f"expected {len(expected)} call(s), got {len(calls)}"
    matched: set[int] = set()
    for exp in expected:
        failure = None
        for i, call in enumerate(calls):
            if i in matched:
                continue
            kind, detail = check_call(exp, call)
            if kind is OK:
                matched.add(i)
                break
            failure = (kind, detail)
        else:
            return failure or (WRONG_COUNT, "no output call left to match")
    return OK, ""
