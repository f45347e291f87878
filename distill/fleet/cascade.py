"""The verifier-gated cascade: try the cheapest suitable member first, escalate when the verifier rejects its answer.

    members = fleet_members("fleet.yaml")                 # cost order, each with cost, categories, best_of, endpoint
    check_answer(task, raw="<tool_call>{...}</tool_call>", tool_calls=None)   # task: the request as an eval Task
    -> Check(accepted=False, reason="unknown function 'get_wether'", calls=[...])

A function call can be checked without knowing the right answer: it must parse, name a tool that the request
offers, and its arguments must pass that tool's JSON Schema. That is exactly a verdict's `schema_valid` (the
verifier's `schema_problem`, what a real API would refuse), so the cascade's decisions on recorded verdicts
(`fleet eval`) are the decisions `fleet serve` makes on live answers.

An answer without a call passes that check, yet it is right only when no offered tool fits; a member that never
calls would end every cascade. The abstention policy decides (`--abstain-policy`, default `admitted`):
- `admitted`: a no-call answer is accepted only from a member admitted for abstention on the request's category
  (fleet.yaml `abstains`, written by `distill fleet admit` from how often its no-call answers were right on that
  category); otherwise the cascade escalates. The category is the one the request declares or the router infers
  (its nearest cluster's); a request of unknown category (the plain cascade, without a router) escalates every
  no-call answer, and the dearest member's answer stands when nobody calls.
- `accept`: every no-call answer is accepted (the behaviour before the policy existed).
- `escalate`: every no-call answer escalates.

A member with `best_of: k` in fleet.yaml spends test-time compute instead of escalating: it answers k times,
the schema-valid answers vote, and the most frequent call wins (ties: the earliest sample); it escalates only
when none of the k is schema-valid. It costs k times its `cost`.

Cost accounting: a request costs the sum, over every member it was sent to, of that member's `cost` times the
samples drawn from it (a rejected answer was paid for too).
"""

from __future__ import annotations

import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from distill.fleet import load_fleet, resolve
from eval.io import DistillError, read_jsonl


@dataclass
class Member:
    name: str
    cost: float  # per sample drawn, in the fleet's unit (default: billions of parameters)
    categories: set[str] | None  # admitted categories; None = admitted for every category (e.g. a given teacher)
    best_of: int = 1
    endpoint: dict | None = None  # {"base_url", "model", ...} for `fleet serve`
    verdicts: Path | None = None
    report: Path | None = None
    abstains: set[str] = field(default_factory=set)  # categories it is admitted for abstention on (fleet.yaml)
    entry: dict = field(default_factory=dict, repr=False)

    @property
    def request_cost(self) -> float:
        """What one request answered by this member costs: `best_of` samples."""
        return self.cost * self.best_of

    def admitted_for(self, category: str | None) -> bool:
        return category is None or self.categories is None or category in self.categories

    def abstains_on(self, category: str | None) -> bool:
        """Whether a no-call answer of this member is trusted on requests of `category` (never when unknown)."""
        return category is not None and category in self.abstains


def fleet_members(fleet_path: str | os.PathLike) -> list[Member]:
    """The members of a fleet file, cheapest first (ties by name), checked: each needs a numeric `cost` >= 0 and,
    when given, an integer `best_of` >= 1 and an `endpoint` with `base_url`."""
    fleet_path = Path(fleet_path)
    if not fleet_path.is_file():
        raise DistillError(f"{fleet_path}: no such fleet file (create it with `distill fleet admit`)")
    fleet = load_fleet(fleet_path)
    if not fleet["members"]:
        raise DistillError(f"{fleet_path}: the fleet has no members")
    members = []
    for i, m in enumerate(fleet["members"]):
        where = f"{fleet_path}: members[{i}] ({m['name']})"
        cost = m.get("cost")
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or cost < 0:
            raise DistillError(f"{where}: 'cost' must be a number >= 0, got {cost!r}")
        best_of = m.get("best_of", 1)
        if isinstance(best_of, bool) or not isinstance(best_of, int) or best_of < 1:
            raise DistillError(f"{where}: 'best_of' must be an integer >= 1, got {best_of!r}")
        endpoint = m.get("endpoint")
        if endpoint is not None and not (isinstance(endpoint, dict) and isinstance(endpoint.get("base_url"), str)):
            raise DistillError(f"{where}: 'endpoint' must be a mapping with 'base_url' (and 'model'), got {endpoint!r}")
        cats = m.get("categories")
        if cats is not None and not (isinstance(cats, list) and all(isinstance(c, str) for c in cats)):
            raise DistillError(f"{where}: 'categories' must be a list of category names")
        abstains = m.get("abstains") or []
        if not (isinstance(abstains, list) and all(isinstance(c, str) for c in abstains)):
            raise DistillError(f"{where}: 'abstains' must be a list of category names")
        members.append(Member(
            name=m["name"], cost=float(cost), categories=None if cats is None else set(cats), best_of=best_of,
            endpoint=endpoint, verdicts=resolve(fleet_path, m.get("verdicts")), report=resolve(fleet_path, m.get("report")),
            abstains=set(abstains), entry=m,
        ))
    return sorted(members, key=lambda x: (x.cost, x.name))


# --- outcomes of members on tasks, from their verdicts ---------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What the cascade sees of one member answering one task (`samples` answers drawn)."""

    accepted: bool  # passed the gold-free check (parsed, known functions, schema-valid)
    correct: bool  # strict: correct by BFCL's rules and schema-valid
    samples: int = 1
    abstained: bool = False  # the answer returned makes no call


NO_CALL_KEY = "[]"  # call_key of an answer without a call


def is_abstention(verdict: dict, expects_nothing: bool) -> bool:
    """Whether the answer behind a verdict made no call: a `no_call` error, or a correct answer to a task whose
    right answer is to call nothing (`expects_nothing`: the task's `expected` is empty)."""
    return verdict.get("error") == "no_call" or (expects_nothing and bool(verdict["correct"]))


def strict(v: dict) -> bool:
    return bool(v["correct"]) and bool(v["schema_valid"])


def read_verdicts(path: Path, task_ids) -> dict[str, list[dict]]:
    """{task_id: verdicts sorted by sample} for the tasks in `task_ids`; other tasks in the file are ignored (a
    member may have been scored on calibration and held-out tasks at once)."""
    wanted = set(task_ids)
    out: dict[str, list[dict]] = {}
    for lineno, v in read_jsonl(path):
        for key in ("task_id", "correct", "schema_valid"):
            if key not in v:
                raise DistillError(f"{path}:{lineno}: verdict without {key!r}")
        if v["task_id"] in wanted:
            out.setdefault(v["task_id"], []).append(v)
    for vs in out.values():
        vs.sort(key=lambda v: v.get("sample", 0))
    return out


def call_key(calls) -> str:
    """A canonical form of a list of calls, for voting: order-free, argument order-free."""
    return json.dumps(sorted(json.dumps(c, sort_keys=True) for c in calls))


def read_answers(traces_path: Path, task_ids) -> dict[tuple[str, int], str]:
    """{(task_id, sample): call_key} of the parseable answers in a traces file (beside a report's verdicts)."""
    from eval.verify import parse_trace

    wanted = set(task_ids)
    out = {}
    for _, t in read_jsonl(traces_path):
        if t.get("task_id") in wanted:
            p = parse_trace(t)
            if p.calls is not None:
                out[(t["task_id"], t.get("sample", 0))] = call_key(p.calls)
    return out


def vote(samples: list[dict], keys: list[str | None]) -> Outcome:
    """best-of-k on recorded samples: keep the schema-valid ones, the most frequent answer wins (ties: earliest)."""
    valid = [(v, k) for v, k in zip(samples, keys, strict=True) if v["schema_valid"]]
    if not valid:
        return Outcome(False, False, len(samples))
    counts = Counter(k for _, k in valid)
    top = max(counts.values())
    winner, key = next((v, k) for v, k in valid if counts[k] == top)  # earliest sample among the most frequent
    return Outcome(True, strict(winner), len(samples), key == NO_CALL_KEY)


def member_outcomes(
    member_name: str, verdicts: dict[str, list[dict]], k: int = 1, answers: dict[tuple[str, int], str] | None = None,
    expects_nothing: set[str] | frozenset = frozenset(),
) -> dict[str, Outcome]:
    """{task_id: Outcome} of a member answering with k samples (k=1: its first sample). best-of-k needs `answers`
    (the calls of each sample) to vote; a task with fewer than k samples is an error naming the member.
    `expects_nothing`: ids of tasks whose right answer is no call (to tell a correct abstention from a correct call)."""
    out = {}
    for tid, vs in verdicts.items():
        if k == 1:
            v = vs[0]
            out[tid] = Outcome(bool(v["schema_valid"]), strict(v), 1, is_abstention(v, tid in expects_nothing))
            continue
        if len(vs) < k:
            raise DistillError(f"member {member_name!r}: best-of-{k} needs {k} samples per task, task {tid!r} has {len(vs)}")
        if answers is None:
            raise DistillError(f"member {member_name!r}: best-of-{k} needs the answers (traces.jsonl beside its verdicts)")
        vs = vs[:k]
        out[tid] = vote(vs, [answers.get((tid, v.get("sample", 0))) for v in vs])
    return out


# --- the cascade -----------------------------------------------------------------------------------------------------


@dataclass
class CascadeResult:
    answered_by: str  # the member whose answer is returned
    tried: list[str]  # members asked, in order (answered_by last)
    accepted: bool  # False when every member was rejected and the last one's answer is returned anyway
    correct: bool
    cost: float  # sum of cost x samples over every member tried


ABSTAIN_POLICIES = ("admitted", "accept", "escalate")
DEFAULT_ABSTAIN_POLICY = "admitted"


def check_policy(policy: str) -> str:
    if policy not in ABSTAIN_POLICIES:
        raise DistillError(f"--abstain-policy must be one of {', '.join(ABSTAIN_POLICIES)}, got {policy!r}")
    return policy


def abstention_accepted(member: Member, category: str | None, policy: str = DEFAULT_ABSTAIN_POLICY) -> bool:
    """Whether the cascade stops at a no-call answer of `member` to a request of `category` (see the module doc)."""
    if policy == "accept":
        return True
    if policy == "escalate":
        return False
    return member.abstains_on(category)


def run_cascade(ladder: list[Member], outcomes: dict[str, Outcome], category: str | None = None,
                policy: str = DEFAULT_ABSTAIN_POLICY) -> CascadeResult:
    """Walk the ladder (members in the order to try) on one task's outcomes {member: Outcome}: the first accepted
    answer is returned (a no-call answer only as the abstention policy allows for `category`); when all are
    rejected, the last member's answer is (it is the best the fleet has)."""
    if not ladder:
        raise DistillError("the cascade has no member to try")
    tried, cost = [], 0.0
    for m in ladder:
        o = outcomes[m.name]
        tried.append(m.name)
        cost += m.cost * o.samples
        if o.accepted and (not o.abstained or abstention_accepted(m, category, policy)):
            return CascadeResult(m.name, tried, True, o.correct, cost)
    return CascadeResult(ladder[-1].name, tried, False, outcomes[ladder[-1].name].correct, cost)


def cost_ladder(members: list[Member], category: str | None = None) -> list[Member]:
    """The plain cascade's order: members admitted for the category (all of them when the category is unknown or
    no member is admitted for it), cheapest request first."""
    fit = [m for m in members if m.admitted_for(category)] or list(members)
    return sorted(fit, key=lambda m: (m.request_cost, m.name))


def ladder_from(start: Member, members: list[Member], category: str | None = None) -> list[Member]:
    """The router-ordered cascade: start at the router's pick, then climb the cost ladder above it (members the
    router ranked cheaper than its pick were judged worse for this request, so they are not tried)."""
    rest = [m for m in cost_ladder(members, category) if m.name != start.name and m.request_cost >= start.request_cost]
    return [start, *rest]


# --- the gold-free check on a live answer -----------------------------------------------------------------------------


@dataclass
class Check:
    accepted: bool
    reason: str  # "" when accepted; else why the answer would be refused
    calls: list[dict] | None  # the parsed calls ([] for an answer without a call, None when malformed)


def check_answer(task, raw: str | None, tool_calls: list | None = None) -> Check:
    """The cascade's check on one answer to a request (an eval.tasks.Task built from the request's messages and
    tools; its expected answer is not used): malformed output, an unknown function or arguments failing the
    tool's JSON Schema reject it. The same `schema_problem` sets a verdict's `schema_valid`."""
    from eval.parse import MALFORMED, parse_output
    from eval.verify import schema_problem

    parsed = parse_output(raw, tool_calls or None)
    if parsed.status == MALFORMED:
        return Check(False, f"malformed: {parsed.detail}", None)
    problem = schema_problem(task, parsed.calls) if parsed.calls else None
    if problem is not None:
        return Check(False, problem, parsed.calls)
    return Check(True, "", parsed.calls)


def gate(check: Check, member: Member, category: str | None, policy: str = DEFAULT_ABSTAIN_POLICY) -> Check:
    """`check` with the abstention policy applied: an accepted answer without a call is rejected (the cascade
    escalates) unless `member` is trusted to abstain on `category`."""
    if check.accepted and check.calls == [] and not abstention_accepted(member, category, policy):
        why = ("its abstentions are not admitted for this request's category" if policy == "admitted"
               else "--abstain-policy escalate")
        where = f"category {category!r}" if category is not None else "a request of unknown category"
        return Check(False, f"answered without a call on {where}; {why}", [])
    return check


def choose_answer(task, member: Member, messages: list[dict], category: str | None = None,
                  policy: str = DEFAULT_ABSTAIN_POLICY) -> tuple[int | None, str]:
    """Which of one member's answers (OpenAI `message` objects, its `best_of` samples) the cascade returns: the
    index of the most frequent accepted answer (ties: the earliest), or None and why the first was rejected. A
    request without tools (task None) cannot be checked: the first answer is returned. What `fleet serve` applies
    to a member's live answers, and what `fleet eval` replays from verdicts."""
    if task is None:
        return 0, ""
    checks = [gate(check_answer(task, m.get("content"), m.get("tool_calls")), member, category, policy) for m in messages]
    valid = [(i, c) for i, c in enumerate(checks) if c.accepted]
    if not valid:
        return None, checks[0].reason
    counts = Counter(call_key(c.calls) for _, c in valid)
    top = max(counts.values())
    return next(i for i, c in valid if counts[call_key(c.calls)] == top), ""
