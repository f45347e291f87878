"""Does training help a real small student call functions, and does DPO add to SFT? Measured on BFCL.

    OMP_NUM_THREADS=2 python benchmarks/quality.py --train-per-category 20 --eval-per-category 8 --steps 8   # 2-core CPU, ~2 h
    python benchmarks/quality.py --device cuda --train-per-category 200 --eval-per-category 100 --steps 150 \
        --train-batch-size 8 --student-samples 2 --batch-size 128 --max-new-tokens 160    # one H200: ~11 min
    nohup python benchmarks/quality.py ... > quality.log 2>&1 &                     # resumable: rerun to continue

Student: SmolLM2-135M-Instruct (pkg:smollm2-135m-instruct, Hermes tool template), LoRA in float32 with the
recipes of `distill demo` (recipes/demo/), on the CPU or one GPU (--device). Training data: BFCL's live
categories plus composed parallel tasks (joined live_simple questions); chosen = the tasks' verified answers,
rejected = the base student's own mistakes (sampled at temperature 0.8) and synthetic hard negatives. Evaluation: BFCL's non-live Python categories and
irrelevance (greedy). Conditions, same pairs and same budget of optimizer steps (--steps):

    base       no training
    sft        SFT for --steps
    dpo        DPO from the base for --steps
    sft-half   SFT for --steps/2: where the two conditions below start from, to see what their DPO half adds
    sft+dpo    SFT for --steps/2, then DPO from that adapter for --steps/2
    sft+dpo+nll  the same, with an SFT (negative log-likelihood) term on the chosen answer added to the DPO loss
               (TRL's loss_type [sigmoid, sft], weights 1:1; the "RPO" of Pang et al. 2024)
    sft+dpo-onpolicy  sft+dpo, with rejected answers from the SFT'd student's own mistakes (sft-half sampled on
               the training tasks like the base student was) instead of the base student's; same chosen answers

Why +nll and -onpolicy: in the first GPU run (benchmarks/results/quality-2026-11-28-gpu.md) plain DPO after SFT
lowered the chosen answers' log-probability from -3 to -17..-39 nats while the margin grew (the training log's
logps/chosen; likelihood displacement), and the student's answers fell apart into malformed calls. The NLL term
holds the chosen answers up. Why on-policy: 624 of that run's 670 student-made rejected answers were prose
without a call, which the SFT'd student no longer writes (log-probability -193 under it): the margin is won before
DPO starts. The SFT'd student's own mistakes are the ones DPO should push down.

DPO computes the reference log-probabilities per step (`precompute_ref_log_probs false`): a run trains on
--steps x --train-batch-size pairs, often fewer than the dataset holds, and precomputing them all would cost more.

Every stage is a distill command (printed), run in this process, its output kept in --out and skipped on a rerun.
Writes benchmarks/results/quality-<date>-<cpu|gpu>.md and .json (sizes, hardware, per condition: accuracy per category and
the error mix, and the DPO runs' logged log-probabilities). No setting is tuned on the evaluation tasks: sizes and
steps are set by the time budget, learning rates are the demo recipes', the NLL weight is 1:1 and was not varied.
The sft-half, +nll and -onpolicy conditions were added after the first GPU run, on the evidence of its training log
and its pairs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from distill import run_info  # noqa: E402
from distill.demo import STUDENT, Stage, _pct, _rel, run_plan  # noqa: E402
from eval.io import atomic_write, write_json  # noqa: E402

EVAL_CATEGORIES = "simple_python,multiple,parallel,parallel_multiple,irrelevance"
CONDITIONS = ("base", "sft-half", "sft", "dpo", "sft+dpo", "sft+dpo+nll", "sft+dpo-onpolicy")


def _recipe_without_init_adapter(src: Path, dst: Path) -> Path:
    """The demo DPO recipe starting from the base model (DPO only): the same keys without init_adapter."""
    lines = [ln for ln in src.read_text().splitlines() if not ln.startswith("init_adapter:")]
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("# written by benchmarks/quality.py from " + _rel(src) + " without init_adapter\n"
                   + "\n".join(lines) + "\n")
    return dst


def plan(args) -> list[Stage]:
    out = Path(args.out)
    o = lambda *parts: _rel(out.joinpath(*parts))  # noqa: E731
    template = _rel(REPO / "distill" / "templates" / "hermes_tool.jinja")
    sft_recipe = _rel(REPO / "recipes" / "demo" / "sft.yaml")
    dpo_recipe = _rel(REPO / "recipes" / "demo" / "dpo.yaml")
    dpo_only_recipe = _rel(_recipe_without_init_adapter(REPO / "recipes" / "demo" / "dpo.yaml",
                                                        out / "recipes" / "dpo_from_base.yaml"))
    limit = lambda n: ["--limit", str(n)] if n else []  # noqa: E731
    train, held_out = o("train_tasks.jsonl"), o("eval_tasks.jsonl")
    ev = ["--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens), "--device", args.device,
          "--dtype", args.dtype]
    half = max(1, args.steps // 2)
    # The demo recipes are written for the CPU (use_cpu: true); on a GPU the same recipe runs there.
    common = ["--per_device_train_batch_size", str(args.train_batch_size), "--use_cpu",
              str(args.device == "cpu").lower(), "--load_in_4bit", "false", "--max_length", str(args.max_length)]
    dpo = ["--precompute_ref_log_probs", "false"]

    def train_stage(name, recipe, steps, lr, extra=(), pairs="pairs"):
        return Stage(f"train {name}", f"{name}: {steps} steps", out / "checkpoints" / name / "adapter_model.safetensors",
                     ["train", recipe, "--dataset_path", o(pairs), *common, "--learning_rate", str(lr),
                      "--output_dir", o("checkpoints", name), "--max_steps", str(steps), "--save_steps", str(steps),
                      *extra])

    def sample_stage(name, what, folder, model):
        """A student answering the training tasks at temperature 0.8: its mistakes become rejected answers."""
        return Stage(name, what, out / folder / "report.json",
                     ["eval", *model, "--tasks", train, "--backend", "hf", "--temperature", "0.8", "--seed", "0",
                      "--samples", str(args.student_samples), *ev, "--no-plots", "--out", o(folder)])

    def pairs_stage(folder, student, what):
        return Stage("pairs", what, out / folder / "pairs_stats.json",
                     ["pairs", "--tasks", train, "--student-traces", o(student, "traces.jsonl"), "--chosen-from",
                      "gold", "--synthetic", "2", "--max-pairs-per-task", "3", "--test-size", "0", "--out", o(folder)])

    def eval_stage(name):
        return Stage(f"eval {name}", f"{name} on held-out tasks", out / "checkpoints" / name / "eval" / "report.json",
                     ["eval", "--adapter", o("checkpoints", name), "--tasks", held_out, *ev,
                      "--out", o("checkpoints", name, "eval")])

    return [
        Stage("import", "training tasks", out / "train_source.jsonl",
              ["import", "bfcl", "--categories", args.train_categories, *limit(args.train_per_category),
               "--out", o("train_source.jsonl")]),
        Stage("import", "held-out tasks", out / "eval_tasks.jsonl",
              ["import", "bfcl", "--categories", EVAL_CATEGORIES, *limit(args.eval_per_category), "--out", held_out]),
        Stage("compose", "composed parallel tasks", out / "train_tasks.jsonl",
              ["compose", "--tasks", o("train_source.jsonl"), "--categories", "live_simple", "--k", "2-3",
               "--share", str(args.composed_share), "--max-tools", "3", "--seed", "0", "--out", train]),
        sample_stage("student", "base student on training tasks (its own mistakes)", "student",
                     ["--model", STUDENT, "--chat-template", template]),
        pairs_stage("pairs", "student", "chosen: verified answers; rejected: base student + synthetic"),
        Stage("eval base", "base student on held-out tasks", out / "eval_base" / "report.json",
              ["eval", "--model", STUDENT, "--chat-template", template, "--tasks", held_out, *ev,
               "--out", o("eval_base")]),
        train_stage("sft", sft_recipe, args.steps, args.sft_lr),
        eval_stage("sft"),
        train_stage("dpo", dpo_only_recipe, args.steps, args.dpo_lr, dpo),
        eval_stage("dpo"),
        train_stage("sft-half", sft_recipe, half, args.sft_lr),
        eval_stage("sft-half"),
        train_stage("sft+dpo", dpo_recipe, args.steps - half, args.dpo_lr,
                    [*dpo, "--init_adapter", o("checkpoints", "sft-half")]),
        eval_stage("sft+dpo"),
        train_stage("sft+dpo+nll", dpo_recipe, args.steps - half, args.dpo_lr,
                    [*dpo, "--loss_type", "sigmoid", "sft", "--loss_weights", "1.0", "1.0",
                     "--init_adapter", o("checkpoints", "sft-half")]),
        eval_stage("sft+dpo+nll"),
        sample_stage("student sft-half", "the SFT'd student on training tasks (its own mistakes)", "student-sft-half",
                     ["--adapter", o("checkpoints", "sft-half")]),
        pairs_stage("pairs-sft-half", "student-sft-half", "chosen: verified answers; rejected: SFT'd student + synthetic"),
        train_stage("sft+dpo-onpolicy", dpo_recipe, args.steps - half, args.dpo_lr,
                    [*dpo, "--init_adapter", o("checkpoints", "sft-half")], pairs="pairs-sft-half"),
        eval_stage("sft+dpo-onpolicy"),
    ]


def hardware() -> dict:
    """distill's run hardware (platform, cores, threads, GPUs) plus what the table names: the CPU model, the GPU,
    the torch and Python versions and OMP_NUM_THREADS."""
    import torch

    info = run_info.hardware()
    try:
        info["cpu"] = next(ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                           if ln.startswith("model name"))
    except (OSError, StopIteration):
        info["cpu"] = platform.processor()
    info.update(gpu=info["gpus"][0] if info["gpus"] else None, torch=torch.__version__,
                python=platform.python_version(), omp_num_threads=os.environ.get("OMP_NUM_THREADS"))
    return info


def training_log(folder: Path) -> dict | None:
    """First and last logged loss of a training run, and for DPO the chosen answers' log-probability and the
    reward margin: a chosen log-probability that falls while the margin grows is DPO pushing the chosen answers
    down along with the rejected ones."""
    path = folder / "trainer_state.json"
    if not path.is_file():
        return None
    logs = [h for h in json.loads(path.read_text())["log_history"] if "loss" in h]
    if not logs:
        return None
    keep = ("step", "loss", "logps/chosen", "logps/rejected", "rewards/margins")
    return {"first": {k: logs[0][k] for k in keep if k in logs[0]}, "last": {k: logs[-1][k] for k in keep if k in logs[-1]}}


def results(args, timings: dict) -> dict:
    out = Path(args.out)
    paths = {"base": out / "eval_base" / "report.json"}
    paths.update({c: out / "checkpoints" / c / "eval" / "report.json" for c in CONDITIONS[1:]})
    reports = {c: json.loads(p.read_text()) for c, p in paths.items()}
    pairs = json.loads((out / "pairs" / "pairs_stats.json").read_text())["summary"]
    onpolicy = json.loads((out / "pairs-sft-half" / "pairs_stats.json").read_text())["summary"]
    return {
        "date": datetime.date.today().isoformat(),
        "hardware": hardware(),
        "student": STUDENT,
        "sizes": {k: v for k, v in vars(args).items() if k not in ("out", "results")},
        "pairs": pairs,
        "pairs_onpolicy": onpolicy,
        "stage_seconds": timings,
        "training": {c: training_log(out / "checkpoints" / c) for c in CONDITIONS[1:]},
        "conditions": {c: {"n": r["n"], "accuracy": r["accuracy"], "strict_accuracy": r["strict_accuracy"],
                           "by_category": {k: {"n": v["n"], "accuracy": v["accuracy"]} for k, v in r["by_category"].items()},
                           "errors": r["errors"]} for c, r in reports.items()},
    }


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


def markdown(res: dict) -> str:
    conds = list(res["conditions"])
    cats = sorted({k for r in res["conditions"].values() for k in r["by_category"]})
    first = res["conditions"][conds[0]]
    s = res["sizes"]
    lines = [f"# Quality benchmark, {res['date']}", "",
             f"Student {res['student']} (LoRA, {s['device']}), trained on BFCL {s['train_categories']} "
             f"({s['train_per_category'] or 'all'} per category) + composed parallel tasks (share {s['composed_share']}); "
             f"{res['pairs']['pairs']} pairs (chosen: verified answers; rejected: "
             f"{_counts(res['pairs']['rejected_source'])}). "
             f"Budget: {s['steps']} optimizer steps of {s['train_batch_size']} pairs per condition (the sft+dpo "
             f"conditions: half SFT, half DPO). Held out: BFCL {EVAL_CATEGORIES} "
             f"({s['eval_per_category'] or 'all'} per category), greedy, max {s['max_new_tokens']} new tokens.",
             *([f"sft+dpo-onpolicy: {res['pairs_onpolicy']['pairs']} pairs, same chosen answers; rejected: "
                f"{_counts(res['pairs_onpolicy']['rejected_source'])}; rejected errors: "
                f"{_counts(res['pairs_onpolicy']['rejected_error'])} (main pairs: {_counts(res['pairs']['rejected_error'])})."]
               if res.get("pairs_onpolicy") else []),
             f"Hardware: {res['hardware']['cpu']} x{res['hardware']['cpu_count']}, GPU {res['hardware']['gpu']}, "
             f"torch {res['hardware']['torch']}; {res['stage_seconds']['total'] / 60:.0f} min in all "
             f"(stages skipped on a rerun not counted).", "",
             "| category | n | " + " | ".join(conds) + " |", "| --- | --- |" + " --- |" * len(conds)]
    for c in cats:
        lines.append(f"| {c} | {first['by_category'].get(c, {}).get('n', '-')} | "
                     + " | ".join(_pct(res["conditions"][k]["by_category"].get(c, {}).get("accuracy")) for k in conds) + " |")
    lines.append(f"| **all** | {first['n']} | " + " | ".join(_pct(res["conditions"][k]["accuracy"]) for k in conds) + " |")
    errors = sorted({e for r in res["conditions"].values() for e in r["errors"]})
    lines += ["", "| error | " + " | ".join(conds) + " |", "| --- |" + " --- |" * len(conds)]
    for e in errors:
        lines.append(f"| {e} | " + " | ".join(str(res["conditions"][k]["errors"].get(e, 0)) for k in conds) + " |")
    dpo_logs = {c: t for c, t in res.get("training", {}).items() if t and "logps/chosen" in t["first"]}
    if dpo_logs:
        lines += ["", "| DPO training | steps | logps/chosen first -> last | logps/rejected first -> last | margin last |",
                  "| --- | --- | --- | --- | --- |"]
        for c, t in dpo_logs.items():
            f, la = t["first"], t["last"]
            lines.append(f"| {c} | {f['step']}-{la['step']} | {f['logps/chosen']:.1f} -> {la['logps/chosen']:.1f} | "
                         f"{f['logps/rejected']:.1f} -> {la['logps/rejected']:.1f} | {la['rewards/margins']:.1f} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/quality", help="working folder, resumed on rerun (default: %(default)s)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"), help="where the table goes")
    p.add_argument("--train-categories", default="live_simple,live_parallel,live_irrelevance",
                   help="BFCL training categories (default: %(default)s; live_multiple prompts run to 3k tokens)")
    p.add_argument("--train-per-category", type=int, default=0, help="tasks per training category, 0 = all")
    p.add_argument("--eval-per-category", type=int, default=0, help="held-out tasks per category, 0 = all")
    p.add_argument("--composed-share", type=float, default=0.25, help="share of composed tasks in training")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per trained condition")
    p.add_argument("--train-batch-size", type=int, default=4, help="pairs per optimizer step (default: %(default)s)")
    p.add_argument("--student-samples", type=int, default=1,
                   help="answers a student gives per training task at temperature 0.8, the source of its own "
                   "mistakes: the base student, and the SFT'd one for sft+dpo-onpolicy (default: %(default)s)")
    p.add_argument("--sft-lr", type=float, default=5e-4, help="SFT learning rate (the demo recipe's)")
    p.add_argument("--dpo-lr", type=float, default=2e-4, help="DPO learning rate (the demo recipe's)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="answer length cap when evaluating")
    p.add_argument("--max-length", type=int, default=2048,
                   help="training sequence cap; composed tasks carry two or three tools' schemas and run past the "
                   "demo recipes' 1024 (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate() call when evaluating")
    p.add_argument("--dtype", default="float32", help="weights when evaluating; training is float32 (the demo recipes)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda when a GPU is visible, else cpu (default: %(default)s)")
    args = p.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    start = time.time()
    timings = run_plan(plan(args), tag="quality")
    timings["total"] = round(time.time() - start, 1)
    res = results(args, timings)
    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"quality-{res['date']}-{'gpu' if args.device == 'cuda' else 'cpu'}"
    write_json(stem.with_suffix(".json"), res)
    table = markdown(res)
    with atomic_write(stem.with_suffix(".md")) as f:
        f.write(table)
    print(table)
    print(f"wrote {stem}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
