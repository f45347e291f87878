"""Does preference training beat SFT for a real small student calling functions? A protocol that cannot fool itself.

One GPU (stage A + B, arms as parallel processes on the one GPU; sized for about 10 minutes of GPU time, not yet
measured):

    python benchmarks/quality.py --device cuda --jobs 9 --train-per-category 200 --dev-per-category 40 \\
        --eval-per-category 100 --sft-steps 60 --arm-steps 60 --checkpoints 3 --train-batch-size 8 \\
        --student-samples 2 --onpolicy 2 --batch-size 128 --max-new-tokens 160 --max-length 2048

A 2-core CPU (what benchmarks/results/quality-2026-12-02-cpu.md ran: 83 min of jobs, two at a time, nothing else
running; DPO at max_length 1536 takes 9-11 GB, so leave the machine's memory to it):

    OMP_NUM_THREADS=1 flock /tmp/distill-heavy.lock python benchmarks/quality.py --device cpu --jobs 2 \\
        --train-per-category 8 --dev-per-category 3 --eval-per-category 6 --sft-steps 6 --arm-steps 4 \\
        --checkpoints 2 --train-batch-size 2 --student-samples 0 --onpolicy 1 --max-new-tokens 96 \\
        --max-length 1536 --dpo-lrs 2e-5,1e-4 --skip-arms grpo

Rerun the same command to resume: every stage is a distill command (printed, logged under OUT/logs/) whose output
is kept in --out and skipped when it exists.

Student: SmolLM2-135M-Instruct (pkg:smollm2-135m-instruct, Hermes tool template), LoRA in float32 with the
recipes of `distill demo` (recipes/demo/). Data:

    training   BFCL live_simple, live_parallel, live_irrelevance (+ composed parallel tasks from the training part)
    dev        --dev-per-category tasks of each TRAINING category, set aside before anything trains or composes;
               every choice is made here
    held out   BFCL simple_python, multiple, parallel, parallel_multiple, irrelevance: evaluated once, in stage B
               (a dev split that shares a task id or a category with them is refused)

Pairs: chosen = the tasks' verified answers; rejected = the base student's own mistakes (--student-samples at
temperature 0.8) and synthetic hard negatives. Every arm starts from one SFT adapter ("start", --sft-steps on the
chosen answers) and trains --arm-steps more on the same pairs:

    sft               SFT continued for the same steps (the SFT control)
    sigmoid-lr<LO>    DPO (TRL loss_type sigmoid) at the lower of --dpo-lrs
    sigmoid-lr<HI>    DPO at the higher one
    sigmoid+sft       DPO plus an SFT term on the chosen answer (loss_type [sigmoid, sft], weights 1:1), at HI
    apo_zero          APO-zero (raises chosen, lowers rejected, each against the reference), at HI
    sigmoid-onpolicy  DPO at HI on on-policy pairs (`distill pairs --on-policy`): the start student answers each
                      training task K times (--onpolicy K); its own mistakes are the rejected answers
    sft+grpo          GRPO with the verifier's reward (recipes/demo/grpo.yaml, --grpo-generations answers per
                      task) from the start adapter; present when distill has `stage: grpo`
    grpo              the same from the base model, for --sft-steps + --arm-steps (the same total budget)

Stage A (dev only): each arm saves --checkpoints evenly spaced checkpoints; each is scored on dev (accuracy per
category, parse rate = format-valid answers), and the training log keeps logps/chosen, logps/rejected and the
margin. Preference arms run with the logps/chosen guard set to stop (logps_guard_stop): an arm whose chosen
answers fall more than --guard-nats below the reference on the same batch is stopped and reported as collapsed,
and cannot be picked. Picked on dev: the best SFT (start, or an sft checkpoint) and the best arm beyond SFT
(preference or GRPO) and its checkpoint (learning rate, loss, step count), by dev accuracy, then parse rate,
then fewer steps.

Stage B (held out, once): the selection is written to OUT/selection.json before any held-out answer is generated;
a rerun whose dev results would pick differently is refused. The two picks are trained again with --seeds seeds
(seed 0 is stage A's run; each seed has its own start adapter), every seed's adapter is scored on the held-out
tasks, and the results give per-seed and mean accuracy and a paired bootstrap 95% interval of the difference
(candidate - baseline), resampling tasks and seeds. The base student is scored on the held-out tasks too (for the
"no category worse than base" check); it is not a choice.

Writes benchmarks/results/quality-<date>-<cpu|gpu>.md and .json (sizes, hardware, stage_a, selection, stage_b,
base, target).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from distill import run_info  # noqa: E402
from distill.demo import (  # noqa: E402
    STUDENT,  # noqa: E402
    pct,
    rel,
)
from eval.io import DistillError, atomic_write, read_jsonl, write_json, write_jsonl  # noqa: E402

EVAL_CATEGORIES = ("simple_python", "multiple", "parallel", "parallel_multiple", "irrelevance")
TEMPLATE = REPO / "data_gen" / "templates" / "hermes_tool.jinja"
SFT_RECIPE = REPO / "recipes" / "demo" / "sft.yaml"
DPO_RECIPE = REPO / "recipes" / "demo" / "dpo.yaml"
GRPO_RECIPE = REPO / "recipes" / "demo" / "grpo.yaml"
RECIPES = {"sft": SFT_RECIPE, "dpo": DPO_RECIPE, "grpo": GRPO_RECIPE}
# The target for the best preference arm against the best SFT on held-out tasks.
TARGET = {"min_gain": 0.03, "irrelevance": 0.60, "simple_python": 0.50, "max_drop_vs_base": 0.05}
# Errors that mean the student did call a function (malformed text and prose are not calls).
CALL_ERRORS = {"unexpected_call", "unknown_function", "schema_violation", "wrong_function", "wrong_count",
               "wrong_value"}


@dataclass(frozen=True)
class Arm:
    """One stage A condition: trains --arm-steps from the start adapter."""

    name: str
    kind: str  # "sft", "preference" (DPO) or "rl" (GRPO with the verifier's reward)
    stage: str  # the recipe stage: "sft", "dpo" or "grpo"
    lr: float
    flags: tuple[str, ...] = ()  # recipe flags beyond the common ones (the loss)
    pairs: str = "pairs"  # the dataset under --out: a pairs folder, or the tasks file for grpo
    what: str = ""
    from_base: bool = False  # trains from the base model for --sft-steps + --arm-steps instead of from the start


@dataclass
class Job:
    """One step of the protocol: a distill command (argv) or an in-process function (fn), done when `done` exists."""

    name: str
    what: str
    done: Path
    argv: list[str] | None = None
    fn: Callable[[], None] | None = None
    needs: list[Path] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------- the arms and data


def arms(args) -> list[Arm]:
    lo, hi = args.dpo_lrs
    out = [
        Arm("sft", "sft", "sft", args.sft_lr, what="SFT continued for the same steps (control)"),
        Arm(f"sigmoid-lr{lo:g}", "preference", "dpo", lo, ("--loss_type", "sigmoid"), what="DPO (sigmoid)"),
        Arm(f"sigmoid-lr{hi:g}", "preference", "dpo", hi, ("--loss_type", "sigmoid"), what="DPO (sigmoid)"),
        Arm("sigmoid+sft", "preference", "dpo", hi,
            ("--loss_type", "sigmoid", "sft", "--loss_weights", "1.0", "1.0"), what="DPO + SFT term (1:1)"),
        Arm("apo_zero", "preference", "dpo", hi, ("--loss_type", "apo_zero"), what="APO-zero"),
    ]
    if args.onpolicy:
        out.append(Arm("sigmoid-onpolicy", "preference", "dpo", hi, ("--loss_type", "sigmoid"),
                       pairs="pairs-onpolicy", what="DPO on the start student's own mistakes"))
    if grpo_available():
        # --train-batch-size tasks x --grpo-generations answers per optimizer step, trained in micro-batches of 2
        # answers (the recipe's reason: a forward over many ~1,500-token prompts at once runs out of CPU memory)
        answers = args.grpo_generations * args.train_batch_size
        micro = 2 if answers % 2 == 0 else 1
        grpo = ("--num_generations", str(args.grpo_generations), "--per_device_train_batch_size", str(micro),
                "--gradient_accumulation_steps", str(answers // micro),
                "--max_completion_length", str(args.max_new_tokens))
        out += [Arm("sft+grpo", "rl", "grpo", args.grpo_lr, grpo, pairs="train_tasks.jsonl",
                    what="GRPO, the verifier's fine reward"),
                Arm("grpo", "rl", "grpo", args.grpo_lr, grpo, pairs="train_tasks.jsonl", from_base=True,
                    what="GRPO from the base model, same total steps")]
    skip = set(args.skip_arms)
    unknown = skip - {a.name for a in out}
    if unknown:
        raise DistillError(f"--skip-arms: no arm named {', '.join(sorted(unknown))} (arms: {', '.join(a.name for a in out)})")
    if "sft" in skip:
        raise DistillError("--skip-arms: the sft control cannot be skipped")
    return [a for a in out if a.name not in skip]


def grpo_available() -> bool:
    """A `stage: grpo` in distill's recipes and the demo's GRPO recipe: then the GRPO arms join the screen."""
    from distill.recipe import STAGES

    return "grpo" in STAGES and GRPO_RECIPE.is_file()


def dev_count(n_tasks: int, dev_per_category: int, train_per_category: int = 0) -> int:
    """How many of a training category's tasks go to dev: `dev_per_category`, or, in a category with fewer tasks
    than dev and training ask for together, its share in proportion to the two, at least one (BFCL has 16
    live_parallel tasks: 40 dev and 200 training tasks per category would ask for all of them and more)."""
    if not train_per_category or n_tasks >= dev_per_category + train_per_category:
        return dev_per_category
    return max(1, round(n_tasks * dev_per_category / (dev_per_category + train_per_category)))


def split_dev(source: list[dict], held_out: list[dict], dev_per_category: int,
              train_per_category: int = 0) -> tuple[list[dict], list[dict]]:
    """(training tasks, dev tasks): the first `dev_per_category` tasks of each training category go to dev (fewer,
    in proportion, in a category too small for `dev_per_category` + `train_per_category`: `dev_count`).

    Dev must come from the training categories only: a task id or a category it shares with the held-out tasks is
    an error, since a choice made on it would be made on held-out data."""
    held_ids = {t["id"] for t in held_out}
    held_cats = {t.get("category") for t in held_out}
    shared_cats = sorted({t.get("category") for t in source} & held_cats)
    if shared_cats:
        raise DistillError(f"training categories {', '.join(map(str, shared_cats))} are also held out: the dev split "
                           "is carved from the training categories and must share none with the held-out tasks")
    sizes = Counter(t.get("category") for t in source)
    wanted = {c: dev_count(n, dev_per_category, train_per_category) for c, n in sizes.items()}
    for c in sorted(c for c in wanted if wanted[c] < dev_per_category):
        print(f"quality.py: {c} has {sizes[c]} tasks, fewer than --dev-per-category {dev_per_category} + "
              f"--train-per-category {train_per_category}: {wanted[c]} go to dev and {sizes[c] - wanted[c]} to "
              f"training, in proportion", file=sys.stderr)
    taken: dict[str, int] = {}
    train, dev = [], []
    for task in source:
        cat = task.get("category")
        if taken.get(cat, 0) < wanted[cat]:
            taken[cat] = taken.get(cat, 0) + 1
            dev.append(task)
        else:
            train.append(task)
    overlap = sorted({t["id"] for t in dev} & held_ids)
    if overlap:
        raise DistillError(f"dev split overlaps the held-out tasks: {', '.join(overlap[:5])}"
                           + (f" and {len(overlap) - 5} more" if len(overlap) > 5 else ""))
    short = sorted(c for c, n in taken.items() if n < wanted[c])
    if short or not dev:
        raise DistillError(f"too few tasks for a dev split of {dev_per_category} per category"
                           + (f" in {', '.join(short)}" if short else ""))
    return train, dev


def _records(path: Path) -> list[dict]:
    return [record for _, record in read_jsonl(path)]


def write_split(out: Path, dev_per_category: int, train_per_category: int = 0) -> None:
    train, dev = split_dev(_records(out / "train_source.jsonl"), _records(out / "eval_tasks.jsonl"), dev_per_category,
                           train_per_category)
    write_jsonl(out / "train_pool.jsonl", train)
    write_jsonl(out / "dev_tasks.jsonl", dev)  # written last: the job's done marker


# ---------------------------------------------------------------------------------------------- the plan


class Planner:
    """Paths and command lines of every job; pure (writes nothing), so a test can read the whole plan."""

    def __init__(self, args):
        self.args = args
        self.out = Path(args.out)
        self.arms = arms(args)

    def o(self, *parts) -> str:
        return rel(self.out.joinpath(*parts))

    def ev_flags(self) -> list[str]:
        a = self.args
        return ["--batch-size", str(a.batch_size), "--max-new-tokens", str(a.max_new_tokens), "--device", a.device,
                "--dtype", a.dtype, "--no-progress"]

    def common_train(self, seed: int) -> list[str]:
        a = self.args
        # The demo recipes are written for the CPU (use_cpu: true); on a GPU the same recipe runs there.
        return ["--per_device_train_batch_size", str(a.train_batch_size), "--use_cpu", str(a.device == "cpu").lower(),
                "--load_in_4bit", "false", "--max_length", str(a.max_length), "--seed", str(seed),
                "--logging_steps", "1", "--report_to", "none"]

    # --- data
    def prepare(self) -> list[Job]:
        a, o = self.args, self.o
        limit = a.train_per_category + a.dev_per_category
        jobs = [
            Job("import train", "training categories (dev is carved from them)", self.out / "train_source.jsonl",
                ["import", "bfcl", "--categories", a.train_categories, "--limit", str(limit),
                 "--out", o("train_source.jsonl")]),
            Job("import held-out", "held-out tasks (stage B only)", self.out / "eval_tasks.jsonl",
                ["import", "bfcl", "--categories", ",".join(EVAL_CATEGORIES),
                 *(["--limit", str(a.eval_per_category)] if a.eval_per_category else []), "--out", o("eval_tasks.jsonl")]),
            Job("split", f"dev split: {a.dev_per_category} tasks per training category", self.out / "dev_tasks.jsonl",
                fn=lambda: write_split(self.out, a.dev_per_category, a.train_per_category)),
            Job("compose", "composed parallel tasks from the training part", self.out / "train_tasks.jsonl",
                ["compose", "--tasks", o("train_pool.jsonl"), "--categories", "live_simple", "--k", "2-3",
                 "--share", str(a.composed_share), "--max-tools", "3", "--seed", "0", "--out", o("train_tasks.jsonl")]),
        ]
        student = []
        if a.student_samples:
            jobs.append(self.sample("student", "the base student on training tasks (its own mistakes)",
                                    ["--model", STUDENT, "--chat-template", rel(TEMPLATE)]))
            student = ["--student-traces", o("student", "traces.jsonl")]
        jobs.append(Job("pairs", "chosen: verified answers; rejected: " + ("base student + " if student else "")
                        + "synthetic",
                        self.out / "pairs" / "pairs_stats.json",
                        ["pairs", "--tasks", o("train_tasks.jsonl"), *student, "--chosen-from", "gold", "--synthetic",
                         "2", "--max-pairs-per-task", "3", "--test-size", "0", "--out", o("pairs")]))
        return jobs

    def sample(self, folder: str, what: str, model: list[str], samples: int | None = None) -> Job:
        """A student answering the training tasks at temperature 0.8: its mistakes become rejected answers."""
        return Job(f"sample {folder}", what, self.out / folder / "report.json",
                   ["eval", *model, "--tasks", self.o("train_tasks.jsonl"), "--backend", "hf", "--temperature", "0.8",
                    "--seed", "0", "--samples", str(samples or self.args.student_samples), *self.ev_flags(),
                    "--no-plots", "--out", self.o(folder)])

    # --- training
    def start_dir(self, seed: int) -> Path:
        return self.out / f"seed{seed}" / "start"

    def arm_dir(self, arm: str, seed: int, steps: int | None = None) -> Path:
        """Stage A runs (seed 0) train --arm-steps and keep checkpoints; stage B reruns stop at the chosen step."""
        return self.out / f"seed{seed}" / (arm if steps is None else f"{arm}-{steps}")

    def train_start(self, seed: int) -> Job:
        a = self.args
        d = self.start_dir(seed)
        return Job(f"train start seed {seed}", f"SFT start adapter: {a.sft_steps} steps", d / "adapter_model.safetensors",
                   ["train", rel(SFT_RECIPE), "--dataset_path", self.o("pairs"), *self.common_train(seed),
                    "--learning_rate", str(a.sft_lr), "--output_dir", rel(d), "--max_steps", str(a.sft_steps),
                    "--save_steps", str(a.sft_steps), "--save_total_limit", "1"])

    def total_steps(self, arm: str) -> int:
        """Stage A steps of an arm: --arm-steps past the start, or the same total from the base."""
        a = self.args
        return a.sft_steps + a.arm_steps if self.by_name(arm).from_base else a.arm_steps

    def by_name(self, arm: str) -> Arm:
        return next(x for x in self.arms if x.name == arm)

    def checkpoint_steps(self, arm: str = "sft") -> list[int]:
        total = self.total_steps(arm)
        every = max(1, total // self.args.checkpoints)
        return sorted({min(total, every * i) for i in range(1, self.args.checkpoints + 1)} | {total})

    def train_arm(self, arm: Arm, seed: int, steps: int | None = None) -> Job:
        """Stage A (steps None): the arm's steps with a checkpoint at each of checkpoint_steps(). Stage B: `steps`."""
        a = self.args
        d = self.arm_dir(arm.name, seed, steps)
        max_steps = self.total_steps(arm.name) if steps is None else steps
        ckpts = self.checkpoint_steps(arm.name)
        save = ["--save_steps", str(ckpts[0]), "--save_total_limit", str(len(ckpts))] if steps is None \
            else ["--save_steps", str(max_steps), "--save_total_limit", "1"]
        common = self.common_train(seed)
        extra = []
        if arm.kind == "preference":
            # the reference per step: an arm trains on fewer pairs than the dataset holds
            extra = ["--precompute_ref_log_probs", "false", "--beta", str(a.beta),
                     "--logps_guard_nats", str(a.guard_nats), "--logps_guard_stop", "true"]
        if arm.stage == "grpo":  # no max_length; the batch (prompts x answers) comes with the arm's flags
            common = [x for i, x in enumerate(common) if x not in ("--max_length", "--per_device_train_batch_size")
                      and common[i - 1] not in ("--max_length", "--per_device_train_batch_size")]
        start = [] if arm.from_base else ["--init_adapter", rel(self.start_dir(seed))]
        return Job(f"train {arm.name} seed {seed}", f"{arm.what}: {max_steps} steps at lr {arm.lr:g}",
                   d / "adapter_model.safetensors",
                   ["train", rel(RECIPES[arm.stage]), "--dataset_path", self.o(arm.pairs), *common,
                    "--learning_rate", str(arm.lr), *start, "--output_dir", rel(d),
                    "--max_steps", str(max_steps), *save, *extra, *arm.flags],
                   needs=[] if arm.from_base else [self.start_dir(seed) / "adapter_model.safetensors"])

    def onpolicy(self) -> list[Job]:
        """The start student answers the training tasks; its mistakes become the on-policy arm's rejected answers."""
        if not self.args.onpolicy:
            return []
        o = self.o
        return [self.sample("student-start", "the start (SFT'd) student on training tasks", ["--adapter", rel(self.start_dir(0))],
                            samples=self.args.onpolicy),
                # --on-policy: rejected answers only from the start student's samples, labelled by kind (its wrong
                # call, its call on an irrelevance task, its abstention on a call task); chosen: its own correct
                # sample where it has one, else the verified answer
                Job("pairs on-policy", "chosen: the start student's correct answers or verified ones; rejected: its "
                    "own mistakes", self.out / "pairs-onpolicy" / "pairs_stats.json",
                    ["pairs", "--tasks", o("train_tasks.jsonl"), "--on-policy", "--student-traces",
                     o("student-start", "traces.jsonl"), "--chosen-from", "gold", "--max-pairs-per-task", "3",
                     "--test-size", "0", "--out", o("pairs-onpolicy")])]

    # --- evaluation
    def stage_a_adapters(self, arm: str) -> dict[int, Path]:
        """{step: adapter folder} of a stage A run as it is on disk: its checkpoints, and the final adapter at the
        step the run ended (earlier than --arm-steps when the guard stopped it)."""
        d = self.arm_dir(arm, 0)
        found = {step: d / f"checkpoint-{step}" for step in self.checkpoint_steps(arm)
                 if (d / f"checkpoint-{step}" / "adapter_model.safetensors").is_file()}
        if (d / "adapter_model.safetensors").is_file():
            found[final_step(d, self.total_steps(arm))] = d
        return found

    def adapter(self, arm: str, seed: int, step: int, stage_b: bool) -> Path:
        """The adapter folder of `arm` after `step` steps past the start (step 0: the start adapter itself)."""
        if step == 0:
            return self.start_dir(seed)
        if stage_b and seed != 0:
            return self.arm_dir(arm, seed, step)
        d = self.arm_dir(arm, 0)
        planned = d if step == self.total_steps(arm) else d / f"checkpoint-{step}"
        return self.stage_a_adapters(arm).get(step, planned)

    def dev_dir(self, arm: str, step: int) -> Path:
        return self.out / "dev" / ("start" if step == 0 else f"{arm}-{step}")

    def eval_job(self, adapter: Path, tasks: str, folder: Path, what: str) -> Job:
        return Job(f"eval {rel(folder)}", what, folder / "report.json",
                   ["eval", "--adapter", rel(adapter), "--tasks", self.o(tasks), *self.ev_flags(), "--no-plots",
                    "--out", rel(folder)], needs=[adapter / "adapter_model.safetensors"])

    def dev_evals(self) -> list[Job]:
        """Every checkpoint that exists (an arm the guard stopped has fewer) and the start adapter, on dev."""
        jobs = [self.eval_job(self.start_dir(0), "dev_tasks.jsonl", self.dev_dir("start", 0), "start adapter on dev")]
        for arm in self.arms:
            for step, adapter in sorted(self.stage_a_adapters(arm.name).items()):
                jobs.append(self.eval_job(adapter, "dev_tasks.jsonl", self.dev_dir(arm.name, step),
                                          f"{arm.name} after {step} steps on dev"))
        return jobs

    def heldout_dir(self, label: str, seed: int) -> Path:
        return self.out / "heldout" / f"seed{seed}" / label

    def stage_b(self, selection: dict) -> list[list[Job]]:
        """Waves of jobs: start adapters of the other seeds, the two picks retrained per seed, held-out evals."""
        by_name = {a.name: a for a in self.arms}
        seeds = range(self.args.seeds)
        base = Job("eval base", "base student on held-out tasks", self.out / "heldout" / "base" / "report.json",
                   ["eval", "--model", STUDENT, "--chat-template", rel(TEMPLATE), "--tasks", self.o("eval_tasks.jsonl"),
                    *self.ev_flags(), "--no-plots", "--out", self.o("heldout", "base")])
        starts = [self.train_start(s) for s in seeds if s != 0]
        trains, evals = [], [base]
        for role in ("baseline", "candidate"):
            pick = selection[role]
            for s in seeds:
                if pick["step"] and s != 0:
                    trains.append(self.train_arm(by_name[pick["arm"]], s, pick["step"]))
                evals.append(self.eval_job(self.adapter(pick["arm"], s, pick["step"], stage_b=True), "eval_tasks.jsonl",
                                           self.heldout_dir(pick["label"], s), f"{pick['label']} seed {s} on held-out"))
        return [starts, trains, evals]


# ---------------------------------------------------------------------------------------------- running


def run_jobs(jobs: list[Job], *, out: Path, parallel: int = 1, lock: str | None = None, tag: str = "quality") -> dict:
    """Run each job whose output is missing, up to `parallel` at once (one process each, on the one GPU or the
    CPU); returns {job name: seconds | "skipped"}. A distill command runs as `python -m distill ...` (training and
    evaluation under `flock LOCK` with --lock), its output in OUT/logs/<job>.log."""
    timings: dict = {}
    todo = []
    for job in jobs:
        if job.done.exists():
            timings[job.name] = "skipped"
        else:
            todo.append(job)
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    def run(job: Job):
        t0 = time.time()
        if job.fn is not None:
            print(f"[{tag}] {job.name}: {job.what}", file=sys.stderr, flush=True)
            job.fn()
        else:
            missing = [rel(p) for p in job.needs if not p.exists()]
            if missing:
                raise DistillError(f"{job.name}: needs {', '.join(missing)}, which an earlier stage did not make")
            heavy = job.argv[0] in ("train", "eval")  # a model in memory for minutes; import, compose, pairs are light
            cmd = [*(["flock", lock] if lock and heavy else []), sys.executable, "-m", "distill", *job.argv]
            log = logs / (job.name.replace("/", "_").replace(" ", "_") + ".log")
            print(f"[{tag}] {job.name}: {job.what}\n    distill {shlex.join(job.argv)}\n    log: {rel(log)}",
                  file=sys.stderr, flush=True)
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "HF_HUB_OFFLINE": "1"}
            with open(log, "w") as f:
                rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=os.getcwd()).returncode
            if rc != 0:
                raise DistillError(f"{job.name} failed (exit status {rc}); see {rel(log)}; rerun to resume")
        if not job.done.exists():
            raise DistillError(f"{job.name} finished but {rel(job.done)} is missing")
        timings[job.name] = round(time.time() - t0, 1)
        print(f"[{tag}] {job.name}: {timings[job.name]} s", file=sys.stderr, flush=True)

    if parallel <= 1:
        for job in todo:
            run(job)
    else:
        with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
            for future in [pool.submit(run, job) for job in todo]:
                future.result()
    return timings


# ---------------------------------------------------------------------------------------------- reading results


def training_log(folder: Path) -> dict | None:
    """The DPO training log's first, lowest and last logps/chosen, logps/rejected and margins (from the final
    trainer_state.json, or the last checkpoint's when the run has not finished), and the guard's record."""
    states = [folder / "trainer_state.json", *sorted(folder.glob("checkpoint-*/trainer_state.json"),
                                                      key=lambda p: int(p.parent.name.split("-")[-1]), reverse=True)]
    path = next((p for p in states if p.is_file()), None)
    if path is None:
        return None
    logs = [h for h in json.loads(path.read_text())["log_history"] if "loss" in h]
    if not logs:
        return None
    keep = ("step", "loss", "logps/chosen", "logps/rejected", "rewards/margins")
    pick = lambda h: {k: h[k] for k in keep if k in h}  # noqa: E731
    out = {"first": pick(logs[0]), "last": pick(logs[-1]), "steps": logs[-1].get("step")}
    chosen = [h["logps/chosen"] for h in logs if "logps/chosen" in h]
    if chosen:
        out["lowest_logps_chosen"] = min(chosen)
    try:
        info = json.loads((folder / "run.json").read_text())
        out["guard"] = info.get("logps_guard")
    except (OSError, ValueError):
        out["guard"] = None
    return out


def collapsed(log: dict | None, guard_nats: float) -> bool:
    """The guard stopped the run, or (a run without the guard's record) its logged chosen log-probability fell
    more than guard_nats below the first logged value."""
    if not log:
        return False
    if log.get("guard"):  # the guard's own verdict (on the same-batch log-ratio; distill.callbacks says why)
        return bool(log["guard"].get("tripped"))
    first = log["first"].get("logps/chosen")
    lowest = log.get("lowest_logps_chosen")
    return first is not None and lowest is not None and (not math.isfinite(lowest) or first - lowest > guard_nats)


def final_step(folder: Path, default: int) -> int:
    """The step a finished run ended at (run.json's global_step), else `default`."""
    try:
        return int(json.loads((folder / "run.json").read_text())["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return default


def report_summary(path: Path) -> dict:
    r = json.loads(path.read_text())
    return {"n": r["n"], "accuracy": r["accuracy"], "format_valid_rate": r.get("format_valid_rate"),
            "by_category": {k: v["accuracy"] for k, v in r["by_category"].items()}, "errors": r["errors"]}


def select(dev: dict, kinds: dict, collapsed_arms: set) -> dict:
    """The best SFT and the best preference arm on dev: {role: {"arm", "step", "label", "dev"}}.

    dev: {arm: {step: dev summary}}, with the start adapter as step 0 of the "sft" arm. Order: dev accuracy, then
    parse rate, then fewer steps, then the order of the arms. A collapsed arm is never picked."""
    best = {}
    for role, kind in (("baseline", "sft"), ("candidate", "preference")):
        options = []
        for order, (arm, steps) in enumerate(dev.items()):
            # the candidate: the best arm beyond SFT, preference-trained (DPO) or, where it ran, GRPO
            if (kinds[arm] == "sft") != (kind == "sft") or arm in collapsed_arms:
                continue
            for step, summary in steps.items():
                options.append(((-summary["accuracy"], -(summary.get("format_valid_rate") or 0.0), step, order),
                                arm, step, summary))
        if not options:
            raise DistillError(f"no {kind} arm left to pick on dev (every one collapsed or none was scored)")
        _, arm, step, summary = min(options, key=lambda x: x[0])
        label = "start" if step == 0 else arm
        best[role] = {"arm": arm, "step": step, "label": label, "dev": summary}
    if best["baseline"]["label"] == best["candidate"]["label"]:
        raise DistillError("baseline and candidate share a label")  # cannot happen: kinds differ
    return best


def freeze_selection(path: Path, selection: dict) -> dict:
    """Held-out is touched once: the first selection is written before stage B; a later one must equal it."""
    slim = {role: {k: v for k, v in pick.items() if k != "dev"} for role, pick in selection.items()}
    if path.is_file():
        before = json.loads(path.read_text())
        if before["picks"] != slim:
            raise DistillError(f"{path}: stage B already ran with {before['picks']}; the dev results now pick {slim}. "
                               "Held-out tasks are evaluated once: use a new --out for a new protocol run")
        return before
    record = {"picks": slim, "frozen_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    write_json(path, record)
    return record


def read_verdicts(folder: Path) -> dict[str, bool]:
    """task id -> correct, from an eval folder's verdicts.jsonl (one greedy sample per task)."""
    return {v["task_id"]: bool(v["correct"]) for v in _records(folder / "verdicts.jsonl")}


def paired_bootstrap(candidate: dict, baseline: dict, reps: int = 10000, seed: int = 0) -> dict:
    """Mean difference (candidate - baseline) and a 95% percentile interval, resampling tasks and seeds.

    candidate, baseline: {seed: {task_id: correct}} over the same seeds and tasks. Each replicate draws seeds with
    replacement and tasks with replacement (the same draw for both arms: the pairing) and averages the per-(seed,
    task) differences. Written out because scipy.stats.bootstrap resamples one axis, and the difference here
    varies over two (which tasks, which training seed)."""
    import numpy as np

    seeds = sorted(candidate)
    if sorted(baseline) != seeds:
        raise ValueError(f"seeds differ: {sorted(candidate)} vs {sorted(baseline)}")
    tasks = sorted(candidate[seeds[0]])
    for s in seeds:
        if set(candidate[s]) != set(tasks) or set(baseline[s]) != set(tasks):
            raise ValueError(f"seed {s}: the two arms were scored on different tasks")
    d = np.array([[float(candidate[s][t]) - float(baseline[s][t]) for t in tasks] for s in seeds])
    rng = np.random.default_rng(seed)
    si = rng.integers(0, d.shape[0], size=(reps, d.shape[0]))
    ti = rng.integers(0, d.shape[1], size=(reps, d.shape[1]))
    # mean over the drawn (seed, task) grid = mean over drawn seeds of each seed row's mean over the drawn tasks
    means = np.array([d[si[r]][:, ti[r]].mean() for r in range(reps)])
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {"mean": float(d.mean()), "ci95": [float(lo), float(hi)]}


def _acc(verdicts: dict[str, bool], categories: dict[str, str]) -> dict:
    by: dict[str, list[bool]] = {}
    for t, ok in verdicts.items():
        by.setdefault(categories[t], []).append(ok)
    return {"accuracy": sum(verdicts.values()) / len(verdicts),
            "by_category": {c: sum(v) / len(v) for c, v in sorted(by.items())}}


def stage_b_section(baseline: str, candidate: str, verdicts: dict, categories: dict[str, str], reps: int = 10000) -> dict:
    """DESIGN's `stage_b` object from held-out verdicts {arm label: {seed: {task_id: correct}}}."""
    arms_out = {}
    for label in (baseline, candidate):
        seeds = {str(s): _acc(v, categories) for s, v in sorted(verdicts[label].items())}
        cats = sorted({c for s in seeds.values() for c in s["by_category"]})
        mean = {"accuracy": sum(s["accuracy"] for s in seeds.values()) / len(seeds),
                "by_category": {c: sum(s["by_category"][c] for s in seeds.values()) / len(seeds) for c in cats}}
        arms_out[label] = {"seeds": seeds, "mean": mean}
    return {"baseline": baseline, "candidate": candidate, "arms": arms_out,
            "difference": paired_bootstrap(verdicts[candidate], verdicts[baseline], reps=reps)}


def never_calls(verdicts_path: Path, tasks: dict[str, dict]) -> dict[str, bool]:
    """Per category: the base student made no function call on any task (prose, malformed text or abstention)."""
    called: dict[str, bool] = {}
    for v in _records(verdicts_path):
        task = tasks[v["task_id"]]
        did = v["error"] in CALL_ERRORS or (v["correct"] and bool(task.get("expected")))
        called[task["category"]] = called.get(task["category"], False) or did
    return {c: not did for c, did in called.items()}


def target_check(stage_b: dict, base: dict, base_never_calls: dict[str, bool]) -> dict:
    """The issue's target: candidate >= baseline + 3 points with the interval above 0; candidate irrelevance >= 60%
    and simple_python >= 50%; no category more than 5 points below the base student's, except where the base never
    calls. Each part says by how much it is met or missed."""
    cand = stage_b["arms"][stage_b["candidate"]]["mean"]
    diff = stage_b["difference"]
    parts = {
        "gain": {"need": f">= +{100 * TARGET['min_gain']:.0f} points", "got": diff["mean"], "met": diff["mean"] >= TARGET["min_gain"],
                 "missed_by": max(0.0, TARGET["min_gain"] - diff["mean"])},
        "ci95_above_0": {"need": "lower bound > 0", "got": diff["ci95"][0], "met": diff["ci95"][0] > 0,
                         "missed_by": max(0.0, -diff["ci95"][0])},
    }
    for cat in ("irrelevance", "simple_python"):
        got = cand["by_category"].get(cat, 0.0)
        parts[cat] = {"need": f">= {100 * TARGET[cat]:.0f}%", "got": got, "met": got >= TARGET[cat],
                      "missed_by": max(0.0, TARGET[cat] - got)}
    worse = {c: base["by_category"][c] - cand["by_category"].get(c, 0.0) for c in base["by_category"]
             if not base_never_calls.get(c, False) and base["by_category"][c] - cand["by_category"].get(c, 0.0)
             > TARGET["max_drop_vs_base"]}
    parts["no_category_below_base"] = {"need": f"at most {100 * TARGET['max_drop_vs_base']:.0f} points below the "
                                       "base student (except where the base never calls)", "got": worse, "met": not worse}
    return {"met": all(p["met"] for p in parts.values()), "parts": parts}


def hardware() -> dict:
    """distill's run hardware plus the CPU model, GPU, torch and Python versions and OMP_NUM_THREADS."""
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


# ---------------------------------------------------------------------------------------------- the results file


def stage_a_results(planner: Planner) -> dict:
    a = planner.args
    start_dev = planner.dev_dir("start", 0) / "report.json"
    out = {"start": {"dev": report_summary(start_dev) if start_dev.is_file() else None,
                     "training": training_log(planner.start_dir(0))}, "arms": {}}
    for arm in planner.arms:
        log = training_log(planner.arm_dir(arm.name, 0))
        dev = {str(step): report_summary(planner.dev_dir(arm.name, step) / "report.json")
               for step in sorted(planner.stage_a_adapters(arm.name))
               if (planner.dev_dir(arm.name, step) / "report.json").is_file()}
        out["arms"][arm.name] = {
            "kind": arm.kind, "what": arm.what, "lr": arm.lr, "pairs": arm.pairs,
            "loss": _loss_of(arm), "beta": a.beta if arm.kind == "preference" else None,
            "training": log, "collapsed": arm.kind == "preference" and collapsed(log, a.guard_nats), "dev": dev,
        }
    return out


def _loss_of(arm: Arm) -> str:
    if arm.stage in ("sft", "grpo"):
        return {"sft": "sft", "grpo": "grpo (verifier reward)"}[arm.stage]
    f = list(arm.flags)
    types = f[f.index("--loss_type") + 1:]
    types = [t for t in types[: next((i for i, x in enumerate(types) if x.startswith("--")), len(types))]]
    return "+".join(types)


def dev_table_input(stage_a: dict) -> tuple[dict, dict, set]:
    """select()'s inputs from stage A: the start adapter is step 0 of the sft arm."""
    dev = {"sft": {0: stage_a["start"]["dev"]}}
    kinds = {}
    for name, arm in stage_a["arms"].items():
        dev.setdefault(name, {}).update({int(k): v for k, v in arm["dev"].items()})
        kinds[name] = arm["kind"]
    return dev, kinds, {n for n, arm in stage_a["arms"].items() if arm["collapsed"]}


def markdown(res: dict) -> str:
    s, a, b = res["sizes"], res["stage_a"], res["stage_b"]
    sel = res["selection"]
    dev_cats = res["protocol"]["dev_categories"]
    lines = [
        f"# Quality benchmark (preference vs SFT), {res['date']}, {res['scale'].upper()} scale", "",
        res["scale_note"], "",
        "## Protocol", "",
        f"Student {res['student']} (LoRA, {s['device']}). Training: BFCL {s['train_categories']} "
        f"({s['train_per_category']} per category after the dev split) + composed parallel tasks (share "
        f"{s['composed_share']}); {res['pairs']['pairs']} pairs (chosen: verified answers; rejected: "
        f"{_counts(res['pairs']['rejected_source'])}). Dev: {s['dev_per_category']} tasks per training category "
        f"({', '.join(dev_cats)}), set aside before composing and mining. "
        + (f"On-policy pairs (sigmoid-onpolicy): {res['pairs_onpolicy']['pairs']} (kinds: "
           f"{_counts(res['pairs_onpolicy'].get('pair_kind', {}))}; chosen: "
           f"{_counts(res['pairs_onpolicy'].get('chosen_source', {}))}). " if res.get("pairs_onpolicy") else "")
        + f"Held out: BFCL {', '.join(EVAL_CATEGORIES)} "
        f"({s['eval_per_category']} per category, {res['sizes']['heldout_tasks']} tasks), greedy, max "
        f"{s['max_new_tokens']} new tokens.",
        f"Every arm starts from one SFT adapter (start: {s['sft_steps']} steps of {s['train_batch_size']} at lr "
        f"{s['sft_lr']:g}) and trains {s['arm_steps']} more steps, checkpoints at steps "
        f"{', '.join(map(str, res['checkpoint_steps']))}; DPO beta {s['beta']}, logps/chosen guard "
        f"{s['guard_nats']} nats (stops the arm)." + (" The grpo arm trains from the base model for the same total "
                                                "steps." if "grpo" in a["arms"] else "")
        + (f" Arms not run: {', '.join(res['protocol']['arms_skipped'])}." if res["protocol"].get("arms_skipped") else ""),
        "Made on dev: " + ", ".join(res["protocol"]["choices_made_on_dev"]) + ". " + res["protocol"]["heldout"]
        + " Not screened: " + res["protocol"]["not_screened"] + ".", "",
        "## Stage A: screen on dev", "",
        "| arm | loss | lr | step | dev accuracy | " + " | ".join(dev_cats) + " | parse rate | logps/chosen first -> "
        "lowest -> last | chosen vs reference, lowest (nats) | logps/rejected first -> last | margin last | status |",
        "| --- | --- | --- | --- | --- | " + "--- | " * len(dev_cats) + "--- | --- | --- | --- | --- | --- |",
    ]

    def dev_row(name, loss, lr, step, dv, log, status):
        fmt = lambda x: "-" if x is None else f"{x:.1f}"  # noqa: E731
        f, la = (log or {}).get("first", {}), (log or {}).get("last", {})
        chosen = (f"{fmt(f.get('logps/chosen'))} -> {fmt((log or {}).get('lowest_logps_chosen'))} -> "
                  f"{fmt(la.get('logps/chosen'))}") if "logps/chosen" in f else "-"
        rejected = f"{fmt(f.get('logps/rejected'))} -> {fmt(la.get('logps/rejected'))}" if "logps/rejected" in f else "-"
        # what the guard reads: the chosen answers' log-ratio to the reference on the same batch (distill.callbacks)
        guard = (log or {}).get("guard") or {}
        ratio = fmt(guard.get("lowest")) if guard.get("measure") == "logratio" else "-"
        return (f"| {name} | {loss} | {lr} | {step} | {pct(dv['accuracy'])} | "
                + " | ".join(pct(dv["by_category"].get(c)) for c in dev_cats)
                + f" | {pct(dv.get('format_valid_rate'))} | {chosen} | {ratio} | {rejected} | {fmt(la.get('rewards/margins'))} | {status} |")

    no_dev = {"accuracy": None, "format_valid_rate": None, "by_category": {}}
    lines.append(dev_row("start", "sft", f"{s['sft_lr']:g}", 0, a["start"]["dev"] or no_dev, None, "-"))
    for name, arm in a["arms"].items():
        status = "collapsed: stopped by the guard" if arm["collapsed"] else "ok"
        if not arm["dev"]:
            trained = arm["training"] is not None
            lines.append(dev_row(name, arm["loss"], f"{arm['lr']:g}", (arm["training"] or {}).get("steps", "-"),
                                 no_dev, arm["training"], status + ("; not scored on dev" if trained else "; not run")))
        for step, dv in arm["dev"].items():
            lines.append(dev_row(name, arm["loss"], f"{arm['lr']:g}", step, dv, arm["training"], status))
    if sel is None:
        lines += ["", "Nothing was picked: the dev scores of stage A are not complete.", "",
                  f"## Stage B: held out, {s['seeds']} seeds", "", res["protocol"]["heldout"], ""]
        return "\n".join(lines + _tail(res)) + "\n"
    lines += ["", f"Picked on dev: baseline (best SFT) **{sel['baseline']['label']}** (step {sel['baseline']['step']}, "
              f"dev {pct(sel['baseline']['dev']['accuracy'])}); candidate (best arm beyond SFT) "
              f"**{sel['candidate']['label']}** (step {sel['candidate']['step']}, dev "
              f"{pct(sel['candidate']['dev']['accuracy'])}).", "",
              f"## Stage B: held out, {s['seeds']} seeds", ""]
    if b is None:
        lines += [res["protocol"]["heldout"], ""]
        return "\n".join(lines + _tail(res)) + "\n"
    cats = sorted({c for arm in b["arms"].values() for c in arm["mean"]["by_category"]})
    lines += ["| arm | seed | all | " + " | ".join(cats) + " |", "| --- | --- | --- |" + " --- |" * len(cats)]
    lines.append(f"| base (untrained) | - | {pct(res['base']['accuracy'])} | "
                 + " | ".join(pct(res["base"]["by_category"].get(c)) for c in cats) + " |")
    for label, arm in b["arms"].items():
        role = "baseline" if label == b["baseline"] else "candidate"
        for seed, r in arm["seeds"].items():
            lines.append(f"| {label} ({role}) | {seed} | {pct(r['accuracy'])} | "
                         + " | ".join(pct(r["by_category"].get(c)) for c in cats) + " |")
        m = arm["mean"]
        lines.append(f"| **{label} mean** | - | **{pct(m['accuracy'])}** | "
                     + " | ".join(pct(m["by_category"].get(c)) for c in cats) + " |")
    d = b["difference"]
    lines += ["", f"Difference candidate - baseline: **{100 * d['mean']:+.1f} points**, paired bootstrap 95% interval "
              f"[{100 * d['ci95'][0]:+.1f}, {100 * d['ci95'][1]:+.1f}] (resampling tasks and seeds).", "",
              "## Target", ""]
    for name, p in res["target"]["parts"].items():
        got = p["got"]
        got_s = (f"{100 * got:.1f}%" if name in ("irrelevance", "simple_python") else f"{100 * got:+.1f} points") \
            if isinstance(got, float) else (", ".join(f"{c} {100 * v:.0f} points below" for c, v in got.items()) or "none")
        miss = f"; missed by {100 * p['missed_by']:.1f} points" if not p["met"] and "missed_by" in p else ""
        lines.append(f"- {name}: need {p['need']}, got {got_s}: {'met' if p['met'] else 'NOT met'}{miss}")
    lines += ["", f"Target {'MET' if res['target']['met'] else 'NOT met'}.", ""]
    return "\n".join(lines + _tail(res)) + "\n"


def _tail(res: dict) -> list[str]:
    """Notes, hardware and time, and the command for the next run with a GPU."""
    return [*(f"Note: {n}" for n in res.get("notes") or []), *([""] if res.get("notes") else []),
            f"Hardware: {res['hardware']['cpu']} x{res['hardware']['cpu_count']}, GPU {res['hardware']['gpu']}, "
            f"torch {res['hardware']['torch']}; {res['seconds'].get('total', 0) / 60:.0f} min of jobs in all (each "
            "job's own time, waiting for the heavy-job lock not counted).", "",
            "Next run with a GPU (stage A + B in one command, arms as parallel processes on the one GPU):", "",
            "```", GPU_COMMAND, "```"]


def _counts(counts: dict) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items())


# The command a GPU session runs, as the docstring (and so --help) shows it.
GPU_COMMAND = next(p for p in __doc__.split("\n\n") if "--device cuda" in p).strip()


# ---------------------------------------------------------------------------------------------- main


def _lrs(text: str) -> tuple[float, float]:
    try:
        lo, hi = sorted(float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"two learning rates, comma-separated (e.g. 5e-6,2e-5), got {text!r}") from None
    return lo, hi


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/quality", help="working folder, resumed on rerun (default: %(default)s)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"), help="where the results files go")
    p.add_argument("--train-categories", default="live_simple,live_parallel,live_irrelevance",
                   help="BFCL training categories, the dev split's source (default: %(default)s)")
    p.add_argument("--train-per-category", type=int, default=200, help="training tasks per category, after the dev split")
    p.add_argument("--dev-per-category", type=int, default=40, help="dev tasks per training category")
    p.add_argument("--eval-per-category", type=int, default=100, help="held-out tasks per category, 0 = all")
    p.add_argument("--composed-share", type=float, default=0.25, help="share of composed tasks in training")
    p.add_argument("--sft-steps", type=int, default=60, help="optimizer steps of the start adapter every arm continues")
    p.add_argument("--arm-steps", type=int, default=60, help="optimizer steps each arm trains past the start adapter")
    p.add_argument("--checkpoints", type=int, default=3, help="evenly spaced checkpoints per arm scored on dev")
    p.add_argument("--train-batch-size", type=int, default=8, help="pairs per optimizer step (default: %(default)s)")
    p.add_argument("--student-samples", type=int, default=2,
                   help="answers the base student gives per training task at temperature 0.8, the source of its own "
                   "mistakes; 0 = synthetic negatives only (default: %(default)s)")
    p.add_argument("--onpolicy", type=int, default=0, metavar="K",
                   help="add the sigmoid-onpolicy arm: the start student answers each training task K times and its "
                   "mistakes are the rejected answers (default: 0, off)")
    p.add_argument("--sft-lr", type=float, default=5e-4, help="SFT learning rate (the demo recipe's)")
    p.add_argument("--dpo-lrs", type=_lrs, default=(5e-6, 2e-5),
                   help="the two DPO learning rates of the screen, LO,HI; the other preference arms use HI "
                   "(default: 5e-6,2e-5, the LoRA DPO recipes' range)")
    p.add_argument("--beta", type=float, default=0.1, help="DPO beta of every preference arm (default: %(default)s)")
    p.add_argument("--grpo-lr", type=float, default=1e-5, help="GRPO learning rate (the demo GRPO recipe's)")
    p.add_argument("--grpo-generations", type=int, default=4,
                   help="GRPO answers sampled per task and step (default: %(default)s)")
    p.add_argument("--skip-arms", type=lambda x: [a for a in x.split(",") if a], default=[],
                   help="comma-separated arms left out of the screen (e.g. grpo on a small CPU); reported as such")
    p.add_argument("--guard-nats", type=float, default=10.0,
                   help="stop a preference arm whose chosen answers fall this many nats below the reference (the guard)")
    p.add_argument("--seeds", type=int, default=3, help="training seeds per arm in stage B (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=10000, help="bootstrap replicates (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=160, help="answer length cap when evaluating")
    p.add_argument("--max-length", type=int, default=2048,
                   help="training sequence cap; composed tasks carry two or three tools' schemas (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate() call when evaluating")
    p.add_argument("--dtype", default="float32", help="weights when evaluating; training is float32 (the demo recipes)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: cuda when a GPU is visible, else cpu (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=1,
                   help="jobs run at once within a wave (arms, evals): 1 on a small CPU, ~6 for 135M students on one GPU")
    p.add_argument("--lock", default=None,
                   help="run every training and evaluation under `flock LOCK`, one at a time on a shared machine")
    p.add_argument("--scale-note", default=None, help="a sentence for the results file on why this scale was run")
    p.add_argument("--note", action="append", default=[], help="a note line for the results file (repeatable)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write the results files from what --out holds (stage B only when it finished)")
    args = p.parse_args(argv)
    if args.device == "auto":
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.seeds < 1 or args.arm_steps < 1 or args.sft_steps < 1 or args.checkpoints < 1:
        p.error("--seeds, --arm-steps, --sft-steps and --checkpoints must be at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    planner = Planner(args)
    timings_path = out / "seconds.json"
    seconds = json.loads(timings_path.read_text()) if timings_path.is_file() else {}

    def run(jobs, parallel=1):
        if args.report_only:
            return
        done = run_jobs(jobs, out=out, parallel=parallel, lock=args.lock)
        seconds.update({k: v for k, v in done.items() if v != "skipped"})
        write_json(timings_path, seconds)  # every invocation's job times, for the results file

    run(planner.prepare())
    run([planner.train_start(0)])
    run(planner.onpolicy())
    # Stage A: every arm from the start adapter, then every checkpoint on dev.
    run([planner.train_arm(arm, 0) for arm in planner.arms], args.jobs)
    run(planner.dev_evals(), args.jobs)
    stage_a = stage_a_results(planner)
    # Nothing is picked before every arm's training and every dev score exists (a --report-only of a run cut short).
    dev_complete = all(arm_dir.is_file() for arm_dir in (planner.arm_dir(a.name, 0) / "adapter_model.safetensors"
                                                          for a in planner.arms)) and all(
        j.done.is_file() for j in planner.dev_evals())
    selection = frozen = None
    if dev_complete:
        selection = select(*dev_table_input(stage_a))
        frozen = freeze_selection(out / "selection.json", selection)
        # Stage B: the two picks, every seed, held-out tasks; touched here and nowhere else.
        for wave in planner.stage_b(selection):
            run(wave, args.jobs)
    seconds["total"] = round(sum(v for k, v in seconds.items() if k != "total"), 1)

    tasks = {t["id"]: t for t in _records(out / "eval_tasks.jsonl")}
    categories = {t: task["category"] for t, task in tasks.items()}
    picks = list(selection.values()) if selection else []
    complete = bool(picks) and (out / "heldout" / "base" / "report.json").is_file() and all(
        (planner.heldout_dir(p["label"], s) / "report.json").is_file() for p in picks for s in range(args.seeds))
    b = base = target = None
    if complete:
        verdicts = {p["label"]: {s: read_verdicts(planner.heldout_dir(p["label"], s)) for s in range(args.seeds)}
                    for p in picks}
        b = stage_b_section(selection["baseline"]["label"], selection["candidate"]["label"], verdicts, categories,
                            reps=args.bootstrap)
        base = report_summary(out / "heldout" / "base" / "report.json")
        target = target_check(b, base, never_calls(out / "heldout" / "base" / "verdicts.jsonl", tasks))
    scale = "gpu" if args.device == "cuda" else "cpu"
    res = {
        "date": datetime.date.today().isoformat(), "scale": scale,
        "scale_note": args.scale_note or ("One GPU." if scale == "gpu" else "CPU scale."),
        "notes": args.note,
        "hardware": hardware(), "student": STUDENT,
        "sizes": {"eval_per_category": args.eval_per_category, "heldout_tasks": len(tasks),
                  **{k: v for k, v in vars(args).items()
                     if k not in ("out", "results", "scale_note", "lock", "eval_per_category", "note", "report_only")}},
        "checkpoint_steps": planner.checkpoint_steps(),
        "protocol": {
            "dev_categories": sorted({t["category"] for t in _records(out / "dev_tasks.jsonl")}),
            "heldout_categories": list(EVAL_CATEGORIES),
            "choices_made_on_dev": ["learning rate (two DPO rates screened)", "loss (" + ", ".join(
                                        a.name for a in planner.arms if a.kind != "sft") + ")",
                                    "step count and checkpoint", "which SFT is the baseline (start or continued)"],
            "arms_skipped": args.skip_arms,
            "heldout": "Held-out tasks were evaluated once, after the selection was frozen "
                       f"({frozen['frozen_at']}, {rel(out / 'selection.json')}); nothing was chosen on them."
                       if complete else "Stage B (held out) has not run to the end: no held-out result is reported."
                       + ("" if dev_complete else " Stage A's dev scores are not complete either, so nothing was "
                          "picked and held-out tasks were never touched."),
            "not_screened": "beta, warmup and max_grad_norm: fixed from published recipes (beta "
                            f"{args.beta}), not varied in this screen",
        },
        "pairs": json.loads((out / "pairs" / "pairs_stats.json").read_text())["summary"],
        "pairs_onpolicy": json.loads((out / "pairs-onpolicy" / "pairs_stats.json").read_text())["summary"]
        if (out / "pairs-onpolicy" / "pairs_stats.json").is_file() else None,
        "stage_a": stage_a,
        "selection": selection,
        "stage_b": b,
        "base": base,
        "target": target,
        "seconds": seconds,
    }
    folder = Path(args.results)
    folder.mkdir(parents=True, exist_ok=True)
    stem = folder / f"quality-{res['date']}-{scale}"
    write_json(stem.with_suffix(".json"), res)
    table = markdown(res)
    with atomic_write(stem.with_suffix(".md")) as f:
        f.write(table)
    print(table)
    print(f"wrote {stem}.md and .json", file=sys.stderr)
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except DistillError as e:
        print(f"quality: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
