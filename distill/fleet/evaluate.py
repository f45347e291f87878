"""`distill fleet eval`: does the fleet beat its teacher, and at what cost? Answered from members' verdicts on
held-out tasks, without running a model.

    distill fleet eval --fleet fleet.yaml --tasks heldout.jsonl --out fleet_eval/
    distill fleet eval --fleet fleet.yaml --tasks heldout.jsonl --teacher reports/teacher --teacher-cost 72.7 \\
        --verdicts qwen05-dpo=checkpoints/qwen05-dpo/eval_heldout --out fleet_eval/

Every strategy answers every held-out task with the answers the members really gave (their verdicts): a strategy's
accuracy is the strict accuracy (correct and schema-valid) of the answers it returns, its cost the mean over tasks of
what it paid (member cost x samples, for every member it asked). Strategies:
- each member alone (one sample), and best-of-k of it where its verdicts hold k samples per task;
- the oracle: the cheapest member that got each task right (an upper bound no router reaches);
- the cascade: cheapest member first, escalating while the verifier rejects the answer (malformed, unknown
  function, schema failure: all knowable without the gold answer, so these are the decisions `fleet serve` makes)
  and on an answer without a call unless the abstention policy trusts it (--abstain-policy, distill.fleet.cascade);
- the cluster router over a sweep of alpha (its pick answers, whatever the verifier says);
- router + cascade over the same sweep (the router's pick first, then up the cost ladder, leaving out the members
  the router expects not to be worth their cost on the request; `[every rung]`: the same without leaving any out,
  at the router's alpha, for comparison).
Requests are taken not to declare their category (as at serving time): the router infers it from the nearest cluster.

Writes to --out: fleet_eval.json (every strategy's numbers), fleet_eval.md (the table and the answer), pareto.png
(accuracy against cost, with the Pareto front), decisions.jsonl (per task: who was asked, who answered, at what cost,
for the strategies at the router's own alpha; the category the router placed it in). With a router and held-out
tasks that declare a category, fleet_eval.md also says where the router placed each category's requests (`placement`).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from distill.fleet.cascade import (
    ABSTAIN_POLICIES,
    DEFAULT_ABSTAIN_POLICY,
    CascadeResult,
    Member,
    Outcome,
    check_policy,
    cost_ladder,
    fleet_members,
    member_outcomes,
    read_answers,
    read_verdicts,
    run_cascade,
)
from distill.fleet.router import registered_router
from eval.io import DistillError, atomic_write, fill_paragraphs, write_json, write_jsonl

DEFAULT_ALPHAS = tuple(round(a / 10, 1) for a in range(11))


@dataclass
class Strategy:
    name: str
    kind: str  # single | oracle | cascade | router | router+cascade, or "cascade [accept]" and "router+cascade [accept]"
    # (the same with every no-call answer accepted, for comparison) and "router+cascade [every rung]" (no member left
    # out of the ladder)
    results: dict[str, CascadeResult]  # task id -> what happened
    alpha: float | None = None
    k: int | None = None
    member: str | None = None
    row: dict = field(default_factory=dict)
    # router+cascade: per task, the dearer members on the request's ladder left out as not worth their cost there
    left_out: dict[str, list[str]] | None = None


def _summarise(s: Strategy, teacher_cost: float) -> dict:
    res = list(s.results.values())
    n = len(res)
    acc = sum(r.correct for r in res) / n
    cost = sum(r.cost for r in res) / n
    tried = Counter(m for r in res for m in r.tried)
    answered = Counter(r.answered_by for r in res)
    return {
        "name": s.name, "kind": s.kind, "alpha": s.alpha, "k": s.k, "member": s.member, "n": n,
        "accuracy": round(acc, 6),
        "ci95": round(1.96 * math.sqrt(acc * (1 - acc) / n), 6),  # normal approximation, for reading differences
        "cost": round(cost, 6),
        "cost_vs_teacher": round(cost / teacher_cost, 6) if teacher_cost else None,
        "answered_by": dict(answered.most_common()),
        "asked": dict(tried.most_common()),
        "escalated": round(sum(len(r.tried) > 1 for r in res) / n, 6),
        "unverified": round(sum(not r.accepted for r in res) / n, 6),  # every member asked was rejected
    }


def _single(member: Member, outcomes: dict[str, Outcome], k: int) -> Strategy:
    res = {t: CascadeResult(member.name, [member.name], o.accepted, o.correct, member.cost * o.samples)
           for t, o in outcomes.items()}
    name = member.name if k == 1 else f"{member.name} best-of-{k}"
    return Strategy(name, "single", res, k=k, member=member.name)


def _oracle(ladder: list[Member], outcomes: dict[str, dict[str, Outcome]], task_ids: list[str]) -> Strategy:
    res = {}
    for t in task_ids:
        right = [m for m in ladder if outcomes[t][m.name].correct]
        m = right[0] if right else ladder[0]
        o = outcomes[t][m.name]
        res[t] = CascadeResult(m.name, [m.name], o.accepted, o.correct, m.cost * o.samples)
    return Strategy("oracle", "oracle", res)


def pareto_front(rows: list[dict]) -> set[str]:
    """Names of the rows no other row beats on both accuracy (higher) and cost (lower), one being strict."""
    front = set()
    for r in rows:
        dominated = any(o["accuracy"] >= r["accuracy"] and o["cost"] <= r["cost"]
                        and (o["accuracy"] > r["accuracy"] or o["cost"] < r["cost"]) for o in rows)
        if not dominated:
            front.add(r["name"])
    return front


def _teacher_member(args_teacher: str | None, teacher_cost: float | None, members: list[Member]) -> tuple[Member, bool]:
    """(teacher, whether it was added from a report folder)."""
    by_name = {m.name: m for m in members}
    if args_teacher is None:
        return max(members, key=lambda m: (m.request_cost, m.name)), False
    if args_teacher in by_name:
        return by_name[args_teacher], False
    p = Path(args_teacher)
    folder = p.parent if p.is_file() else p
    if not (folder / "verdicts.jsonl").is_file():
        raise DistillError(f"--teacher {args_teacher}: neither a fleet member ({', '.join(by_name)}) nor a report "
                           f"folder with verdicts.jsonl")
    if teacher_cost is None:
        raise DistillError("--teacher REPORT_DIR needs --teacher-cost (in the unit of the members' costs)")
    import json

    name = "teacher"
    if (folder / "report.json").is_file():
        name = json.loads((folder / "report.json").read_text(encoding="utf-8")).get("model") or name
    if name in by_name:
        name = f"{name} (teacher)"
    return Member(name=name, cost=float(teacher_cost), categories=None, verdicts=folder / "verdicts.jsonl",
                  report=folder / "report.json"), True


def _verdict_overrides(pairs: list[str]) -> dict[str, Path]:
    out = {}
    for p in pairs or []:
        name, sep, path = p.partition("=")
        if not sep or not name or not path:
            raise DistillError(f"--verdicts {p!r}: expected NAME=PATH (a verdicts.jsonl or the report folder holding it)")
        path = Path(path)
        out[name] = path / "verdicts.jsonl" if path.is_dir() else path
    return out


def evaluate_fleet(fleet_path, tasks_path, *, router_dir=None, alphas=DEFAULT_ALPHAS, teacher=None, teacher_cost=None,
                   verdicts: list[str] | None = None, best_of_sweep=(3, 5), abstain_policy=DEFAULT_ABSTAIN_POLICY) -> dict:
    """Every strategy's numbers on the held-out tasks: {"rows": [...], "teacher": name, "answer": {...}, ...}.
    The cascades follow `abstain_policy` (see distill.fleet.cascade); with a policy other than `accept`, rows with
    every no-call answer accepted are added for comparison (`[accept]`)."""
    from eval.tasks import load_tasks

    check_policy(abstain_policy)
    members = fleet_members(fleet_path)
    teacher_m, added = _teacher_member(teacher, teacher_cost, members)
    if added:
        members = sorted([*members, teacher_m], key=lambda m: (m.cost, m.name))
    overrides = _verdict_overrides(verdicts)
    unknown = set(overrides) - {m.name for m in members}
    if unknown:
        raise DistillError(f"--verdicts names {', '.join(sorted(unknown))}, not in the fleet ({', '.join(m.name for m in members)})")
    tasks = load_tasks(tasks_path)
    ids = list(tasks)
    nothing = {t for t, task in tasks.items() if not task.expected}  # right answer: no call

    # outcomes[task][member] as each member answers inside the fleet (its best_of), and single-model variants
    outcomes: dict[str, dict[str, Outcome]] = {t: {} for t in ids}
    singles: list[Strategy] = []
    for m in members:
        path = overrides.get(m.name, m.verdicts)
        if path is None:
            raise DistillError(f"member {m.name!r} has no 'verdicts' in {fleet_path}; pass --verdicts {m.name}=PATH")
        if not Path(path).is_file():
            raise DistillError(f"member {m.name!r}: verdicts file {path} does not exist")
        vs = read_verdicts(Path(path), ids)
        missing = [t for t in ids if t not in vs]
        if missing:
            raise DistillError(
                f"member {m.name!r}: {path} has no verdict for {len(missing)} of the {len(ids)} tasks in {tasks_path} "
                f"(e.g. {missing[0]!r}); evaluate it on these tasks (`distill eval`) and pass --verdicts {m.name}=DIR")
        n_samples = min(len(v) for v in vs.values())
        ks = sorted({1, m.best_of, *[k for k in best_of_sweep if k <= n_samples]})
        traces = Path(path).parent / "traces.jsonl"
        answers = read_answers(traces, ids) if max(ks) > 1 and traces.is_file() else None
        for k in ks:
            if k > 1 and (answers is None or n_samples < k):
                if k == m.best_of:
                    raise DistillError(f"member {m.name!r} has best_of {k}: its verdicts need {k} samples per task "
                                       f"(found {n_samples}) and the answers in {traces}")
                continue
            out = member_outcomes(m.name, vs, k, answers, nothing)
            singles.append(_single(m, out, k))
            if k == m.best_of:
                for t, o in out.items():
                    outcomes[t][m.name] = o

    teacher_row_name = teacher_m.name if teacher_m.best_of == 1 else f"{teacher_m.name} best-of-{teacher_m.best_of}"
    ladder = cost_ladder(members)  # requests declare no category: every member is suitable
    strategies = list(singles)
    strategies.append(_oracle(ladder, outcomes, ids))
    compare = abstain_policy != "accept"
    strategies.append(Strategy("cascade", "cascade", {t: run_cascade(ladder, outcomes[t], None, abstain_policy)
                                                      for t in ids}))
    if compare:
        strategies.append(Strategy("cascade [accept]", "cascade [accept]", {t: run_cascade(ladder, outcomes[t], None, "accept")
                                                                   for t in ids}))

    router = None
    notes = []
    placed, routed_category = None, {}
    router_dir = router_dir or registered_router(fleet_path)
    if router_dir is not None:
        from distill.fleet.router import load_router

        router = load_router(router_dir, members)
        overlap = set(router.meta["calibration"]["task_ids"]) & set(ids)
        if overlap:
            notes.append(f"{len(overlap)} of the {len(ids)} held-out tasks were in the router's calibration set "
                         f"({router.meta['calibration']['tasks']}): the router's numbers are optimistic")
        emb = router.features([(tasks[t].messages, tasks[t].tools) for t in ids])
        sweep = sorted({*alphas, router.alpha})
        for a in sweep:
            decisions = {t: router.decide(emb[i], alpha=a) for i, t in enumerate(ids)}
            if a == router.alpha:
                routed_category = {t: d.category for t, d in decisions.items()}
                placed = placement({t: tasks[t].category for t in ids}, routed_category,
                                   {t: outcomes[t][d.pick.name].correct for t, d in decisions.items()},
                                   router.meta["calibration"].get("categories") or [])
                if placed["unseen"]:
                    notes.append(f"held-out categories {', '.join(placed['unseen'])} are not among the router's "
                                 f"calibration categories ({', '.join(placed['calibration_categories']) or 'none'}): "
                                 f"it places those requests by their nearest calibration tasks (see where it placed "
                                 f"them); calibrate on requests like the ones the fleet will serve where you can")
            picks = {}
            for t, d in decisions.items():
                m, o = d.pick, outcomes[t][d.pick.name]
                picks[t] = CascadeResult(m.name, [m.name], o.accepted, o.correct, m.cost * o.samples)
            strategies.append(Strategy(f"router a={a:g}", "router", picks, alpha=a))
            left_out = {t: [m.name for m in d.every_rung if m is not d.pick and m.name in d.not_worth]
                        for t, d in decisions.items()}
            strategies.append(Strategy(f"router+cascade a={a:g}", "router+cascade", {
                t: run_cascade(d.ladder, outcomes[t], d.category, abstain_policy) for t, d in decisions.items()},
                alpha=a, left_out=left_out))
            if compare and a == router.alpha:
                strategies.append(Strategy(f"router+cascade a={a:g} [accept]", "router+cascade [accept]", {
                    t: run_cascade(d.ladder, outcomes[t], d.category, "accept") for t, d in decisions.items()},
                    alpha=a, left_out=left_out))
            if a == router.alpha:
                strategies.append(Strategy(f"router+cascade a={a:g} [every rung]", "router+cascade [every rung]", {
                    t: run_cascade(d.every_rung, outcomes[t], d.category, abstain_policy)
                    for t, d in decisions.items()}, alpha=a))
    else:
        notes.append("no router: fit one with `distill fleet fit` (or pass --router) to see the router strategies")

    rows = [_summarise(s, teacher_m.request_cost) for s in strategies]
    front = pareto_front([r for r in rows if r["kind"] != "oracle"])
    for r in rows:
        r["pareto"] = r["name"] in front
    teacher_row = next(r for r in rows if r["name"] == teacher_row_name)
    answer = _answer(rows, teacher_row)
    test_time = _best_of_vs_larger(rows)
    for n in notes:
        print(f"distill fleet eval: note: {n}", file=sys.stderr)
    return {
        "tasks": str(tasks_path), "n": len(ids), "fleet": str(fleet_path), "teacher": teacher_m.name,
        "teacher_cost": teacher_m.request_cost, "router": str(router_dir) if router_dir else None,
        "router_alpha": router.alpha if router else None,
        "router_predictor": router.predictor if router else None, "abstain_policy": abstain_policy,
        "members": [{"name": m.name, "cost": m.cost, "best_of": m.best_of,
                     "categories": sorted(m.categories) if m.categories is not None else None,
                     "abstains": sorted(m.abstains)} for m in members],
        "rows": rows, "answer": answer, "best_of_vs_larger": test_time, "placement": placed, "notes": notes,
        "_strategies": strategies, "_tasks": tasks, "_routed_category": routed_category,
    }


def placement(declared: dict[str, str | None], routed: dict[str, str | None], correct: dict[str, bool],
              calibration_categories: list[str]) -> dict | None:
    """Where the router placed the held-out requests: for each category the tasks declare, how many it placed in
    each category (inferred from their nearest calibration tasks, as at serving time; it decides which members are
    admitted) and how often its pick was right there. Calibration on other kinds of request than the held-out ones
    shows here first: BFCL's non-live irrelevance requests placed with live_simple, for one. None when no task
    declares a category."""
    by: dict[str, dict] = {}
    for t, cat in declared.items():
        if cat is None:
            continue
        row = by.setdefault(cat, {"n": 0, "placed": Counter(), "correct": 0})
        row["n"] += 1
        row["placed"][routed.get(t) or "(none)"] += 1
        row["correct"] += bool(correct.get(t))
    if not by:
        return None
    calib = sorted({c for c in calibration_categories if c})
    return {
        "by_category": {c: {"n": r["n"], "placed": dict(r["placed"].most_common()),
                            "router_accuracy": round(r["correct"] / r["n"], 6)} for c, r in sorted(by.items())},
        "calibration_categories": calib,
        "unseen": sorted(c for c in by if c not in calib),
    }


def _best_of_vs_larger(rows: list[dict]) -> list[dict]:
    """Test-time compute against size: each best-of-k row next to the cheapest single sample of another member that
    costs at least as much (what the same budget buys instead)."""
    ones = [r for r in rows if r["kind"] == "single" and r["k"] == 1]
    out = []
    for r in rows:
        if r["kind"] != "single" or r["k"] == 1:
            continue
        rivals = [o for o in ones if o["member"] != r["member"] and o["cost"] >= r["cost"]]
        if rivals:
            o = min(rivals, key=lambda o: (o["cost"], -o["accuracy"]))
            out.append({"best_of": r["name"], "cost": r["cost"], "accuracy": r["accuracy"], "larger": o["name"],
                        "larger_cost": o["cost"], "larger_accuracy": o["accuracy"],
                        "best_of_wins": r["accuracy"] > o["accuracy"]})
    return out


def _answer(rows: list[dict], teacher: dict) -> dict:
    """The headline: the fleet's best accuracy and the cheapest way to match the teacher, in the teacher's terms."""
    fleet = [r for r in rows if r["kind"] in ("cascade", "router", "router+cascade")
             or (r["kind"] == "single" and r["member"] != teacher["member"])]
    best = max(fleet, key=lambda r: (r["accuracy"], -r["cost"])) if fleet else None
    matching = [r for r in fleet if r["accuracy"] >= teacher["accuracy"]]
    cheapest = min(matching, key=lambda r: (r["cost"], -r["accuracy"])) if matching else None
    tc = teacher["cost"]

    def pct(r):
        return f"{100 * r['cost'] / tc:.0f}%" if tc else "n/a"

    if best is None:
        text = "the fleet has no member besides the teacher"
    elif cheapest is not None:
        verb = "beats" if cheapest["accuracy"] > teacher["accuracy"] else "matches"
        text = (f"Yes. {cheapest['name']} {verb} the teacher ({cheapest['accuracy']:.3f} strict accuracy against "
                f"{teacher['accuracy']:.3f}) at {pct(cheapest)} of its cost per request")
        if best["name"] != cheapest["name"]:
            text += f"; the most accurate, {best['name']}, reaches {best['accuracy']:.3f} at {pct(best)}"
        text += "."
    else:
        text = (f"No. The best the fleet does is {best['name']}: {best['accuracy']:.3f} strict accuracy against the "
                f"teacher's {teacher['accuracy']:.3f}, at {pct(best)} of its cost per request.")
    return {"beats_teacher": best is not None and best["accuracy"] > teacher["accuracy"],
            "matches_teacher": cheapest is not None, "cheapest_matching": cheapest["name"] if cheapest else None,
            "best": best["name"] if best else None, "text": text}


def _router_label(result: dict) -> str:
    if result["router"] is None:
        return "none"
    return (f"{result['router']} (fit with alpha {result['router_alpha']:g}, predictor "
            f"{result.get('router_predictor') or 'clusters'})")


def _markdown(result: dict) -> str:
    rows = result["rows"]
    t = result["teacher"]
    lines = [
        "# Fleet evaluation",
        "",
        f"{result['n']} held-out tasks ({result['tasks']}); teacher: **{t}** (cost {result['teacher_cost']:g} per "
        f"request); router: {_router_label(result)}; abstention policy: {result.get('abstain_policy', 'accept')} "
        f"(a no-call answer ends a cascade only from a member admitted for abstention on the request's category; "
        f"`[accept]` rows accept every no-call answer); router+cascade leaves out of its ladder the members the router "
        f"expects not to be worth their cost on the request (`[every rung]`: without leaving any out).",
        "",
        "**Does the fleet beat the teacher?** " + result["answer"]["text"],
        "",
        "Accuracy is strict (correct by BFCL's rules and schema-valid); ±: 95% interval half-width. Cost: mean per "
        "request of member cost x samples, for every member asked. *Escalated*: requests that asked more than one "
        "member; *unverified*: every member asked was rejected by the verifier and the last answer was returned. "
        "Pareto: no other strategy is both more accurate and cheaper.",
        "",
        "| strategy | accuracy | ± | cost | vs teacher | escalated | unverified | answered by | Pareto |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | :---: |",
    ]
    for r in sorted(rows, key=lambda r: (r["cost"], -r["accuracy"])):
        who = ", ".join(f"{k} {v}" for k, v in list(r["answered_by"].items())[:4])
        vs = "n/a" if r["cost_vs_teacher"] is None else f"{100 * r['cost_vs_teacher']:.0f}%"
        name = f"**{r['name']}**" if r["name"] == t else r["name"]
        lines.append(f"| {name} | {r['accuracy']:.3f} | {r['ci95']:.3f} | {r['cost']:.3g} | {vs} | "
                     f"{100 * r['escalated']:.0f}% | {100 * r['unverified']:.0f}% | {who} | {'✓' if r['pareto'] else ''} |")
    if result.get("best_of_vs_larger"):
        lines += ["", "**Test-time compute or a larger model?** Each best-of-k against one sample of the cheapest "
                  "member that costs at least as much:", "",
                  "| best-of-k | cost | accuracy | instead: one sample of | cost | accuracy | better |",
                  "| --- | ---: | ---: | --- | ---: | ---: | --- |"]
        for b in result["best_of_vs_larger"]:
            lines.append(f"| {b['best_of']} | {b['cost']:.3g} | {b['accuracy']:.3f} | {b['larger']} | "
                         f"{b['larger_cost']:.3g} | {b['larger_accuracy']:.3f} | "
                         f"{'best-of-k' if b['best_of_wins'] else 'larger model'} |")
    if result.get("placement"):
        lines += ["", *placement_lines(result["placement"], result["router_alpha"])]
    for n in result["notes"]:
        lines += ["", f"Note: {n}."]
    return "\n".join(lines) + "\n"


def placement_lines(placed: dict, alpha: float) -> list[str]:
    """The placement table (`placement`) as Markdown."""
    lines = [f"**Where the router placed the requests.** Each held-out task's own category against the category the "
             f"router inferred from its nearest calibration tasks (which decides the members admitted to answer), "
             f"with the router's accuracy at alpha {alpha:g} on them:", "",
             "| category | tasks | placed as | router accuracy |", "| --- | ---: | --- | ---: |"]
    for cat, r in placed["by_category"].items():
        where = ", ".join(f"{k} {v}" for k, v in r["placed"].items())
        lines.append(f"| {cat} | {r['n']} | {where} | {r['router_accuracy']:.3f} |")
    return lines


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    singles = [r for r in rows if r["kind"] == "single"]
    ax.scatter([r["cost"] for r in singles], [r["accuracy"] for r in singles], c="tab:gray", zorder=3, label="single model")
    for r in singles:
        ax.annotate(r["name"], (r["cost"], r["accuracy"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for kind, color in (("router", "tab:blue"), ("router+cascade", "tab:green")):
        rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["alpha"])
        if rs:
            ax.plot([r["cost"] for r in rs], [r["accuracy"] for r in rs], "o-", color=color, ms=4, label=f"{kind} (alpha sweep)")
    for kind, marker, color in (("cascade", "s", "tab:orange"), ("oracle", "*", "tab:red")):
        rs = [r for r in rows if r["kind"] == kind]
        ax.scatter([r["cost"] for r in rs], [r["accuracy"] for r in rs], marker=marker, s=120, color=color, zorder=4, label=kind)
    teacher = next(r for r in rows if r["name"] == result["teacher"])
    ax.axhline(teacher["accuracy"], color="black", ls=":", lw=1, label=f"teacher: {result['teacher']}")
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["cost"])
    ax.step([r["cost"] for r in front], [r["accuracy"] for r in front], where="post", color="black", lw=1, alpha=0.4,
            label="Pareto front")
    costs = [r["cost"] for r in rows if r["cost"] > 0]
    if costs and max(costs) / min(costs) > 20:  # parameter counts span orders of magnitude
        ax.set_xscale("log")
    ax.set_xlabel("cost per request (member cost x samples)")
    ax.set_ylabel("strict accuracy")
    ax.set_title(f"Fleet on {result['n']} held-out tasks")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=110)
    plt.close(fig)


def write_outputs(result: dict, out: Path, plots: bool = True) -> list[Path]:
    out = Path(out)
    strategies: list[Strategy] = result["_strategies"]
    tasks = result["_tasks"]
    alpha = result["router_alpha"]
    keep = [s for s in strategies
            if s.kind in ("cascade", "cascade [accept]", "oracle") or (s.alpha is not None and s.alpha == alpha)]
    routed = result.get("_routed_category") or {}
    decisions = ({"task_id": t, "category": tasks[t].category,
                  "routed_category": routed.get(t) if s.kind.startswith("router") else None, "strategy": s.name,
                  "tried": r.tried, "answered_by": r.answered_by, "accepted": r.accepted, "correct": r.correct,
                  "cost": r.cost, **({"left_out": s.left_out[t]} if s.left_out is not None else {})}
                 for s in keep for t, r in s.results.items())
    public = {k: v for k, v in result.items() if not k.startswith("_")}
    paths = [out / "fleet_eval.json", out / "fleet_eval.md", out / "decisions.jsonl"]
    write_json(paths[0], public)
    with atomic_write(paths[1]) as f:
        f.write(_markdown(public))
    write_jsonl(paths[2], decisions)
    if plots:
        paths.append(out / "pareto.png")
        _plot(public, paths[-1])
    return paths


def eval_cli(args) -> int:
    alphas = DEFAULT_ALPHAS
    if args.alphas:
        try:
            alphas = tuple(float(a) for a in args.alphas.split(","))
        except ValueError:
            raise DistillError(f"--alphas {args.alphas!r}: expected comma-separated numbers in [0, 1]") from None
        if not all(0 <= a <= 1 for a in alphas):
            raise DistillError(f"--alphas {args.alphas!r}: every alpha must be in [0, 1]")
    sweep = tuple(int(k) for k in args.best_of.split(",")) if args.best_of else ()
    result = evaluate_fleet(args.fleet, args.tasks, router_dir=args.router, alphas=alphas, teacher=args.teacher,
                            teacher_cost=args.teacher_cost, verdicts=args.verdicts, best_of_sweep=sweep,
                            abstain_policy=args.abstain_policy)
    paths = write_outputs(result, Path(args.out), plots=not args.no_plots)
    print(_markdown({k: v for k, v in result.items() if not k.startswith("_")}))
    print(f"distill fleet eval: wrote {', '.join(str(p) for p in paths)}")
    return 0


def add_parser(actions: argparse._SubParsersAction) -> None:
    """`distill fleet eval` (registered under `distill fleet`)."""
    e = actions.add_parser(
        "eval",
        help="does the fleet beat its teacher, and at what cost? single models, oracle, router, cascade, from verdicts",
        description=fill_paragraphs("Score every routing strategy on held-out tasks from the answers the members really gave "
        "(their verdicts; no model runs): each member alone and best-of-k where its verdicts hold k samples, the "
        "oracle (cheapest member that was right), the verifier-gated cascade (cheapest first, escalating on malformed "
        "output, unknown functions and schema failures), the cluster router over a sweep of alpha, and router + "
        "cascade (the router's pick, then up the cost ladder to the members worth their cost on the request; the "
        "`[every rung]` row climbs to all of them). Accuracy is strict (correct and schema-valid); cost is the mean per request of member cost x "
        "samples for every member asked. Writes --out/fleet_eval.json, fleet_eval.md (table and answer), pareto.png "
        "and decisions.jsonl. Each member's verdicts must cover every task of --tasks: the fleet file's `verdicts`, "
        "or --verdicts NAME=PATH."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  distill fleet eval --fleet fleet.yaml --tasks heldout.jsonl --out fleet_eval/\n"
        "  distill fleet eval --fleet fleet.yaml --tasks heldout.jsonl --teacher reports/teacher --teacher-cost 72.7 "
        "--out fleet_eval/\n"
        "  distill fleet eval --fleet fleet.yaml --tasks heldout.jsonl --verdicts qwen05=ckpt/qwen05/eval_heldout --out fleet_eval/",
    )
    e.add_argument("--fleet", required=True, help="fleet file")
    e.add_argument("--tasks", required=True, help="held-out tasks .jsonl (not the router's calibration tasks)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--router", default=None, help="router folder (default: the one recorded in --fleet by `fleet fit`; "
                   "without one, the router strategies are left out)")
    e.add_argument("--teacher", default=None, metavar="NAME|REPORT_DIR", help="the teacher to compare with: a member name, "
                   "or a report folder (report.json + verdicts.jsonl) that joins the fleet at the top of the cascade "
                   "(default: the member with the highest cost)")
    e.add_argument("--teacher-cost", type=float, default=None, help="with --teacher REPORT_DIR: its cost per request, in "
                   "the unit of the members' costs (e.g. 72.7 for a 72.7B model when costs are billions of parameters)")
    e.add_argument("--verdicts", action="append", default=[], metavar="NAME=PATH", help="verdicts of member NAME on "
                   "--tasks (a verdicts.jsonl or its report folder), instead of the fleet file's; repeatable")
    e.add_argument("--alphas", default=None, help="comma-separated alphas for the router sweep (default: 0,0.1,...,1 plus "
                   "the router's own)")
    e.add_argument("--best-of", default="3,5", metavar="K,K", help="best-of-k rows for members whose verdicts hold k "
                   "samples per task, to compare k samples of a small model with one of a larger (default: %(default)s; "
                   "'' for none)")
    e.add_argument("--abstain-policy", choices=ABSTAIN_POLICIES, default=DEFAULT_ABSTAIN_POLICY,
                   help="when a cascade stops at an answer without a call: admitted = only from a member admitted for "
                   "abstention on the request's category (fleet.yaml `abstains`; the router infers the category, the "
                   "plain cascade knows none and escalates), accept = always, escalate = never; rows with `accept` are "
                   "added for comparison (default: %(default)s)")
    e.add_argument("--no-plots", action="store_true", help="skip pareto.png")
    e.set_defaults(run=eval_cli)
