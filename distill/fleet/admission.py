"""`distill fleet admit`: decide, category by category, whether an evaluated student joins the fleet.

    distill fleet admit checkpoints/qwen05-dpo/eval --fleet fleet.yaml --min-accuracy 0.8 --min-schema-valid 0.95
    distill fleet admit checkpoints/qwen05-dpo/eval --fleet fleet.yaml --relative-to reports/teacher --max-gap 0.05

A category is admitted when every rule holds for it (each rule names its flag in the reasons):
- at least --min-n traces of it were scored (a handful of tasks says little);
- its --metric (strict accuracy by default: correct by BFCL's rules and valid against the tool schemas, what a
  real API accepts) is at least --min-accuracy;
- its schema-valid rate is at least --min-schema-valid;
- with --relative-to, the teacher's report on the same task file has the category and the student's metric is
  at most --max-gap below the teacher's.
A report with traces still missing (a `distill eval` whose requests failed) admits nothing.

Separately, a category is admitted for abstention (the member's `abstains` list) when the member answered at
least --min-n of its tasks without a call and at least --min-abstention-precision of those no-call answers were
right (the tasks wanted no call). The cascade trusts a no-call answer only from a member admitted for abstention
on the request's category (distill.fleet.cascade); every other no-call answer escalates. Which answers made no
call is read from traces.jsonl beside the verdicts (what `distill eval` writes), else from the report's task
file when it is still the file scored.

The member is written to fleet.yaml (see distill.fleet for the schema) with every category's numbers and
decision; re-admitting a name replaces its entry, keeping keys that other tools added. Exit status: 0 when the
student is admitted for at least one category, 1 when it is refused for all (its old entry, if any, is removed:
the fleet must not route to a student whose latest evaluation failed), 2 for bad input.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from distill.fleet import fleet_lock, load_fleet, relative_to_fleet, save_fleet
from eval.compare import default_label, load_report
from eval.io import DistillError, fill_paragraphs, read_jsonl

METRICS = ("strict_accuracy", "accuracy")
# The keys admission writes on a member; any other key of an existing entry (e.g. `endpoint`) is kept.
OWNED = ("name", "base_model", "adapter", "adapter_fingerprint", "parameters", "parameters_from", "cost",
         "cost_basis", "categories", "by_category", "report", "verdicts", "tasks", "tasks_fingerprint",
         "data_version", "admission", "abstains")


@dataclass
class Thresholds:
    metric: str = "strict_accuracy"
    min_accuracy: float = 0.75
    min_schema_valid: float = 0.9
    min_n: int = 10
    max_gap: float | None = None  # with a teacher report: most the metric may fall below the teacher's
    min_abstention_precision: float = 0.75  # share of a category's no-call answers that must be right to trust them

    def check(self) -> None:
        if self.metric not in METRICS:
            raise DistillError(f"--metric must be one of {', '.join(METRICS)}, got {self.metric!r}")
        for name in ("min_accuracy", "min_schema_valid", "max_gap", "min_abstention_precision"):
            v = getattr(self, name)
            if v is not None and not 0 <= v <= 1:
                raise DistillError(f"--{name.replace('_', '-')} is a share between 0 and 1, got {v}")


def _category_stats(report_path: Path, report: dict) -> dict[str, dict]:
    """Per-category n, accuracy, strict accuracy and schema-valid rate. Reports written before the schema-valid
    rate was kept per category get it from their verdicts.jsonl."""
    stats = {cat: dict(c) for cat, c in report["by_category"].items()}
    if all("schema_valid_rate" in c for c in stats.values()):
        return stats
    counts: dict[str, list[int]] = {}
    for _, v in read_jsonl(report_path.parent / "verdicts.jsonl"):
        k = counts.setdefault(v["category"], [0, 0])
        k[0] += 1
        k[1] += bool(v["schema_valid"])
    for cat, c in stats.items():
        n, valid = counts.get(cat, (0, 0))
        c["schema_valid_rate"] = round(valid / n, 6) if n else 0.0
    return stats


def _no_call_answers(report_path: Path, report: dict) -> set[tuple[str, int]] | None:
    """(task_id, sample) of every answer without a call, from traces.jsonl beside the verdicts, else from the report's
    task file (a `no_call` error, or a correct answer to a task expecting no call); None when neither is there."""
    from distill.fleet.cascade import is_abstention
    from eval.parse import NO_CALL
    from eval.verify import parse_trace

    traces = report_path.parent / "traces.jsonl"
    if traces.is_file():
        return {(t.get("task_id"), t.get("sample", 0)) for _, t in read_jsonl(traces) if parse_trace(t).status == NO_CALL}
    path = Path(str(report.get("tasks")))
    if not path.is_file():
        return None
    from eval.tasks import file_fingerprint, load_tasks

    if file_fingerprint(path) != report["tasks_fingerprint"]:
        return None
    nothing = {tid for tid, t in load_tasks(path).items() if not t.expected}
    return {(v["task_id"], v.get("sample", 0)) for _, v in read_jsonl(report_path.parent / "verdicts.jsonl")
            if is_abstention(v, v["task_id"] in nothing)}


def abstention_stats(report_path: Path, report: dict) -> dict[str, dict] | None:
    """{category: {"n": answers without a call, "correct": of which right}} over the report's verdicts."""
    no_call = _no_call_answers(report_path, report)
    if no_call is None:
        return None
    out: dict[str, dict] = {c: {"n": 0, "correct": 0} for c in report["by_category"]}
    for _, v in read_jsonl(report_path.parent / "verdicts.jsonl"):
        if (v["task_id"], v.get("sample", 0)) in no_call:
            c = out.setdefault(v["category"], {"n": 0, "correct": 0})
            c["n"] += 1
            c["correct"] += bool(v["correct"]) and bool(v["schema_valid"])
    return out


def decide(report_path: Path, report: dict, th: Thresholds, teacher: tuple[Path, dict] | None = None) -> dict[str, dict]:
    """{category: {n, accuracy, strict_accuracy, schema_valid_rate, [teacher_<metric>], admitted, failed (the rules
    it failed, by flag), reasons (each with its numbers)}}."""
    th.check()
    stats = _category_stats(report_path, report)
    teacher_stats = None
    if teacher is not None:
        t_path, t_report = teacher
        if t_report["tasks_fingerprint"] != report["tasks_fingerprint"]:
            raise DistillError(
                f"{t_path} scores another task file ({t_report.get('tasks')}, {t_report['tasks_fingerprint'][:19]}...) "
                f"than {report_path} ({report.get('tasks')}, {report['tasks_fingerprint'][:19]}...): the gap would "
                f"not mean anything; evaluate both on the same tasks"
            )
        teacher_stats = t_report["by_category"]
    missing = (report.get("generation") or {}).get("missing") or 0
    abstentions = abstention_stats(report_path, report)
    m = th.metric
    out = {}
    for cat, c in sorted(stats.items()):
        failed: list[tuple[str, str]] = []  # (rule, why)
        if missing:
            failed.append(("complete report", f"the report is partial: {missing} requests failed in its `distill eval` (rerun it)"))
        if c["n"] < th.min_n:
            failed.append(("--min-n", f"only {c['n']} traces scored (< {th.min_n})"))
        if c[m] < th.min_accuracy:
            failed.append(("--min-accuracy", f"{m} {c[m]:.3f} < {th.min_accuracy:.3f}"))
        if c["schema_valid_rate"] < th.min_schema_valid:
            failed.append(("--min-schema-valid", f"schema_valid_rate {c['schema_valid_rate']:.3f} < {th.min_schema_valid:.3f}"))
        entry = {k: c[k] for k in ("n", "accuracy", "strict_accuracy", "schema_valid_rate")}
        if teacher_stats is not None:
            t = teacher_stats.get(cat)
            if t is None:
                failed.append(("--relative-to", "the teacher's report has no traces of this category"))
            else:
                entry[f"teacher_{m}"] = t[m]
                gap = t[m] - c[m]
                if th.max_gap is not None and gap > th.max_gap + 1e-12:  # float noise must not refuse an equal gap
                    failed.append(("--max-gap", f"{m} {c[m]:.3f} is {gap:.3f} below the teacher's {t[m]:.3f} (> {th.max_gap:.3f})"))
        out[cat] = {**entry, "admitted": not failed, "failed": [rule for rule, _ in failed],
                    "reasons": [f"{why} ({rule})" for rule, why in failed],
                    "abstentions": _abstention_decision(abstentions, cat, th, missing)}
    return out


def _abstention_decision(stats: dict | None, cat: str, th: Thresholds, missing: int) -> dict:
    """{n, correct, precision, admitted, reason} for trusting the member's no-call answers on `cat`."""
    if stats is None:
        return {"n": None, "correct": None, "precision": None, "admitted": False,
                "reason": "neither traces.jsonl beside the verdicts nor the scored task file tells which answers made "
                          "no call"}
    a = stats.get(cat, {"n": 0, "correct": 0})
    precision = round(a["correct"] / a["n"], 6) if a["n"] else None
    if missing:
        reason = "the report is partial (complete report)"
    elif a["n"] < th.min_n:
        reason = f"only {a['n']} answers without a call (< {th.min_n}, --min-n)"
    elif precision < th.min_abstention_precision:
        reason = (f"{a['correct']} of {a['n']} answers without a call were right ({precision:.3f} < "
                  f"{th.min_abstention_precision:.3f}, --min-abstention-precision)")
    else:
        reason = ""
    return {"n": a["n"], "correct": a["correct"], "precision": precision, "admitted": not reason, "reason": reason}


def parameter_count(model: str, trust_remote_code: bool = False) -> int | None:
    """Parameters of a model from its config alone: the architecture is built on the meta device, which
    allocates no memory and reads no weights (a 1.5B model in about a second). None when the config cannot be
    read (a name only a server knows, or a Hub id that is not cached offline)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from data_gen.local_models import resolve_model

    try:
        # A .gguf file or pkg: name reads the config of its converted folder (converted here if not yet).
        config = AutoConfig.from_pretrained(resolve_model(model), trust_remote_code=trust_remote_code)
        with torch.device("meta"):
            lm = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, DistillError):  # DistillError: a pkg: model whose package is absent
        return None
    return sum(p.numel() for p in lm.parameters())  # tied embeddings are one parameter, counted once


def _data_version(report: dict) -> str | None:
    """The tasks' `source` (BFCL data version): recorded by `distill eval`; for a `distill score` report, read
    from the tasks file when it is still the file that was scored."""
    if report.get("data_version"):
        return report["data_version"]
    path = Path(str(report.get("tasks")))
    if not path.is_file():
        return None
    from eval.tasks import file_fingerprint

    if file_fingerprint(path) != report["tasks_fingerprint"]:
        return None
    sources = sorted({str(r["source"]) for _, r in read_jsonl(path) if r.get("source")})
    return ", ".join(sources) or None


def _local_or_id(fleet_path: Path, name: str | None) -> str | None:
    """A local folder as a path relative to the fleet file; anything else (a Hub id) as it is."""
    if name is None:
        return None
    return relative_to_fleet(fleet_path, name) if Path(name).exists() else name


def member_entry(fleet_path: Path, report_path: Path, report: dict, decisions: dict, th: Thresholds, *, name: str,
                 relative_to: Path | None, parameters: int | None, parameters_from: str, cost: float | None) -> dict:
    if cost is None:
        cost, basis = parameters / 1e9, "parameters_in_billions"
    else:
        basis = "given"
    verdicts = report_path.parent / "verdicts.jsonl"
    return {
        "name": name,
        "base_model": _local_or_id(fleet_path, report["model"]),
        "adapter": _local_or_id(fleet_path, report.get("adapter")),
        "adapter_fingerprint": report.get("adapter_fingerprint"),
        "parameters": parameters,
        "parameters_from": parameters_from,
        "cost": cost,
        "cost_basis": basis,
        "categories": [c for c, d in decisions.items() if d["admitted"]],
        "abstains": [c for c, d in decisions.items() if d["abstentions"]["admitted"]],
        "by_category": decisions,
        "report": relative_to_fleet(fleet_path, report_path),
        "verdicts": relative_to_fleet(fleet_path, verdicts),
        "tasks": _local_or_id(fleet_path, report.get("tasks")),
        "tasks_fingerprint": report["tasks_fingerprint"],
        "data_version": _data_version(report),
        "admission": {
            "metric": th.metric,
            "min_accuracy": th.min_accuracy,
            "min_schema_valid": th.min_schema_valid,
            "min_n": th.min_n,
            "relative_to": relative_to_fleet(fleet_path, relative_to) if relative_to else None,
            "max_gap": th.max_gap,
            "min_abstention_precision": th.min_abstention_precision,
            "admitted_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
    }


def admit(report: str | Path, fleet: str | Path, th: Thresholds, *, relative_to: str | Path | None = None,
          name: str | None = None, cost: float | None = None, parameters: int | None = None,
          trust_remote_code: bool = False, dry_run: bool = False) -> tuple[dict, list[str]]:
    """Decide and (unless dry_run) update the fleet file. Returns (the member entry, warnings)."""
    fleet_path = Path(fleet)
    report_path, rep = load_report(report)
    if not (report_path.parent / "verdicts.jsonl").is_file():
        raise DistillError(f"{report_path.parent / 'verdicts.jsonl'}: missing; the fleet keeps each member's per-task "
                           f"verdicts (rescore with `distill score` or `distill eval`)")
    if th.max_gap is not None and relative_to is None:
        raise DistillError("--max-gap needs --relative-to TEACHER_REPORT")
    teacher = load_report(relative_to) if relative_to is not None else None
    if teacher is not None and th.max_gap is None:
        raise DistillError("--relative-to needs --max-gap (how far below the teacher a category may be)")
    if cost is not None and cost <= 0:
        raise DistillError(f"--cost must be positive, got {cost}")
    decisions = decide(report_path, rep, th, teacher)
    name = name or default_label(rep)
    if parameters is not None:
        if parameters <= 0:
            raise DistillError(f"--parameters must be positive, got {parameters}")
        parameters, parameters_from = int(parameters), "--parameters"
    else:
        parameters = parameter_count(rep["model"], trust_remote_code)
        parameters_from = "config"
        if parameters is None and cost is None:
            raise DistillError(f"cannot read the config of {rep['model']!r} to count its parameters (a served model, or "
                               f"a Hub id not cached here): pass --parameters N or --cost C")
    entry = member_entry(fleet_path, report_path, rep, decisions, th, name=name,
                         relative_to=teacher[0] if teacher else None, parameters=parameters,
                         parameters_from=parameters_from if parameters is not None else None, cost=cost)
    warnings = []
    with fleet_lock(fleet_path):
        current = load_fleet(fleet_path)
        others = [m for m in current["members"] if m["name"] != name]
        old = next((m for m in current["members"] if m["name"] == name), None)
        for m in others:
            if m.get("tasks_fingerprint") not in (None, entry["tasks_fingerprint"]):
                warnings.append(f"member {m['name']!r} was admitted on another task file ({m.get('tasks')}): their "
                                f"accuracies do not compare")
            if m.get("cost_basis") and m["cost_basis"] != entry["cost_basis"]:
                warnings.append(f"member {m['name']!r} has cost basis {m['cost_basis']!r}, this one {entry['cost_basis']!r}: "
                                f"the router compares costs, so give every member costs in one unit")
        if entry["categories"]:
            # Keep keys other tools added to the old entry (e.g. a serving endpoint); replace what admission owns.
            merged = {**entry, **{k: v for k, v in (old or {}).items() if k not in OWNED}}
            members = [merged if m["name"] == name else m for m in current["members"]] if old else [*current["members"], merged]
        else:
            members = others
        if not dry_run and (entry["categories"] or old is not None):
            save_fleet(fleet_path, {**current, "members": members})
    entry["_replaced"] = old is not None
    return entry, warnings


def admit_cli(args) -> int:
    th = Thresholds(metric=args.metric, min_accuracy=args.min_accuracy, min_schema_valid=args.min_schema_valid,
                    min_n=args.min_n, max_gap=args.max_gap, min_abstention_precision=args.min_abstention_precision)
    entry, warnings = admit(args.report, args.fleet, th, relative_to=args.relative_to, name=args.name, cost=args.cost,
                            parameters=args.parameters, trust_remote_code=args.trust_remote_code, dry_run=args.dry_run)
    replaced = entry.pop("_replaced")
    for w in warnings:
        print(f"distill fleet admit: warning: {w}", file=sys.stderr)
    m = th.metric
    print(f"{entry['name']}: {entry['base_model']}" + (f" + {entry['adapter']}" if entry["adapter"] else "")
          + f", {entry['parameters'] or '?'} parameters, cost {entry['cost']} ({entry['cost_basis']})")
    for cat, d in entry["by_category"].items():
        verdict = "admitted" if d["admitted"] else "refused: " + "; ".join(d["reasons"])
        print(f"  {cat:<28} n={d['n']:<5} {m} {d[m]:.3f}  schema-valid {d['schema_valid_rate']:.3f}  {verdict}")
        a = d["abstentions"]
        if a["n"]:
            print(f"  {'':<28} {a['n']} without a call, {a['correct']} right: abstentions "
                  + ("trusted" if a["admitted"] else "not trusted: " + a["reason"]))
    if entry["abstains"]:
        print(f"admitted for abstention on: {', '.join(entry['abstains'])} (its no-call answers end the cascade there)")
    where = "(dry run: nothing written)" if args.dry_run else f"-> {args.fleet}"
    if entry["categories"]:
        print(f"{'replaced' if replaced else 'admitted'} {entry['name']!r} for {len(entry['categories'])} of "
              f"{len(entry['by_category'])} categories: {', '.join(entry['categories'])} {where}")
        return 0
    lacked = sorted({rule for d in entry["by_category"].values() for rule in d["failed"]})
    print(f"refused {entry['name']!r} for every category (lacked: {', '.join(lacked)})"
          + (f"; its previous entry was removed {where}" if replaced else f" {where}"))
    return 1


def add_parser(actions: argparse._SubParsersAction) -> None:
    """`distill fleet admit` (registered under `distill fleet`)."""
    a = actions.add_parser(
        "admit",
        help="admit an evaluated student to fleet.yaml, category by category, with reasons",
        description=fill_paragraphs("Decide per category whether the evaluated model joins the fleet, and write it to --fleet "
        "(atomically; re-admitting a --name replaces its entry and keeps keys other tools added). A category is "
        "admitted when it has at least --min-n scored traces, its --metric is at least --min-accuracy, its "
        "schema-valid rate at least --min-schema-valid and, with --relative-to, its --metric at most --max-gap "
        "below the teacher's on the same task file. The entry records the base model, adapter, parameter count "
        "(from the model config, no weights loaded), cost, every category's numbers and decision, the report and "
        "verdicts paths, the task-file fingerprint and the BFCL data version.\n\n"
        "Exit status: 0 admitted for at least one category; 1 refused for every category (each reason printed; "
        "an earlier entry of the same name is removed); 2 bad input."),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
        "  distill fleet admit checkpoints/qwen05-dpo/eval --fleet fleet.yaml --min-accuracy 0.8\n"
        "  distill fleet admit checkpoints/qwen05-dpo/eval --fleet fleet.yaml --relative-to reports/teacher --max-gap 0.05\n"
        "  distill fleet admit reports/teacher --fleet fleet.yaml --name teacher --parameters 72.7e9 --min-accuracy 0",
    )
    a.add_argument("report", metavar="REPORT", help="report.json of the model (or its folder), with verdicts.jsonl beside it")
    a.add_argument("--fleet", required=True, help="fleet file to update (created if missing)")
    a.add_argument("--name", default=None, help="member name (default: the adapter's folder name, or the model name); "
                   "an existing member of this name is replaced")
    a.add_argument("--metric", choices=["strict_accuracy", "accuracy"], default="strict_accuracy",
                   help="the per-category score the thresholds apply to: strict_accuracy (correct and schema-valid, "
                   "what a real API accepts) or accuracy (BFCL's rules alone) (default: %(default)s)")
    a.add_argument("--min-accuracy", type=float, default=0.75, metavar="X",
                   help="lowest --metric a category may have, a share in [0, 1] (default: %(default)s)")
    a.add_argument("--min-schema-valid", type=float, default=0.9, metavar="Y",
                   help="lowest share of schema-valid answers a category may have (default: %(default)s)")
    a.add_argument("--min-n", type=int, default=10,
                   help="fewest scored traces a category needs before it can be admitted (default: %(default)s)")
    a.add_argument("--min-abstention-precision", type=float, default=0.75, metavar="P",
                   help="a category is admitted for abstention (the cascade accepts the member's no-call answers on it "
                   "instead of escalating) when at least --min-n of its answers made no call and at least this share "
                   "of those were right (default: %(default)s)")
    a.add_argument("--relative-to", default=None, metavar="TEACHER_REPORT",
                   help="the teacher's report.json on the same task file; needs --max-gap")
    a.add_argument("--max-gap", type=float, default=None, metavar="Z",
                   help="with --relative-to: most a category's --metric may fall below the teacher's, a share (0.05 = "
                   "5 points)")
    a.add_argument("--cost", type=float, default=None, metavar="C",
                   help="the member's cost figure, in whatever unit every member of the fleet uses (e.g. $ per 1M "
                   "tokens); default: its parameter count in billions (a 0.5B student costs 0.5), which ranks members "
                   "as their inference compute does")
    a.add_argument("--parameters", type=float, default=None, metavar="N",
                   help="parameter count, when the model's config cannot be read here (a served model), e.g. 72.7e9")
    a.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub when reading the config")
    a.add_argument("--dry-run", action="store_true", help="print the decision; write nothing")
    a.set_defaults(run=admit_cli)
