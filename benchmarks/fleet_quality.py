"""The real fleet, measured: do real small students, routed per request, beat every one of them?

    # 2 CPU cores (what ran for benchmarks/results/fleet-2026-12-02-cpu/: 85 minutes): 90 calibration and 120
    # held-out tasks, the built-in members plus the quality benchmark's preference (DPO) student (put the arm and
    # checkpoint its selection.json picks in the path)
    OMP_NUM_THREADS=2 python benchmarks/fleet_quality.py --calib-per-category 30 --eval-per-category 40 \\
        --train-per-category 40 --steps 16 --train-batch-size 2 --max-length 2048 --max-new-tokens 64 \\
        --member smollm2-dpo=runs/quality-cpu/seed0/sigmoid-lr2e-05/checkpoint-2
    # the same, calibrated on the held-out categories' other tasks (fleet-2026-12-02-cpu-calibrated-on-held-out/):
    # add --calibrate-on held-out and a new --out holding copies of the first run's train_source.jsonl,
    # heldout_source.jsonl, pairs/, checkpoints/ and members/*/heldout/ (34 minutes instead of 85)
    # one GPU (the 500 held-out tasks):
    python benchmarks/fleet_quality.py --device cuda --eval-categories \\
        simple_python,multiple,parallel,parallel_multiple,irrelevance --eval-per-category 100 \\
        --train-categories live_simple,live_multiple,live_parallel,live_parallel_multiple,live_irrelevance \\
        --calib-per-category 60 --train-per-category 200 --steps 100 --batch-size 64 --max-task-chars 0 \\
        --max-length 3072
    # a GPU machine that cannot hold every member's model (no network, little to carry): the same command in
    # three steps, the same --out each time. 1. On the CPU, --stop-after split writes the task files; evaluate
    # there the member the GPU machine lacks with `distill eval` into OUT/members/NAME/calib and .../heldout
    # (benchmarks/README.md has the commands). 2. On the GPU, --stop-after members trains and evaluates the rest
    # (the finished evaluations are skipped). 3. On the CPU, --live-device cpu admits, fits, replays and serves
    # the live requests there. The results name where each member's answers were generated.

Members (each a real model, evaluated greedily by `distill eval`):
    smollm2-base   SmolLM2-135M-Instruct (pkg:smollm2-135m-instruct) with the Hermes tool template
    smollm2-sft    an SFT student of it: LoRA with recipes/demo/sft.yaml on the verified answers of the training
                   tasks (--steps optimizer steps of --train-batch-size examples)
    gemma-fewshot  Gemma 3 270M (pkg:gemma-3-270m), a base model, with the few-shot completion prompt (as
                   `distill demo` uses it as the teacher)
    --member NAME=SPEC (repeatable) adds an existing student without training it: SPEC is a LoRA adapter folder
                   (adapter_config.json; `distill eval --adapter`, which loads the tokenizer and chat template it
                   trained with), a model folder or .gguf file, or a pkg: name (`distill eval --model`). The
                   preference student of benchmarks/quality.py is the arm and checkpoint its selection.json names:
                   OUT/seed0/<arm>/checkpoint-<step> (stage A), or OUT/seed<k>/<arm>-<step> (stage B's reruns).
                   It is evaluated on calibration and held-out, admitted, routed and served live like the others.
                   The name must be new (not a built-in member's, not given twice) and SPEC must exist: checked
                   before anything runs (exit 2). Its training data is unknown here: if it trained on tasks of the
                   calibration split (benchmarks/quality.py trains on BFCL live_* tasks too), its calibration
                   accuracy is optimistic; the results README says so.
Their cost is their parameter count in billions (`distill fleet admit` reads it from the config; an adapter's is
its base model's). The working folder records its members (members.json): a rerun into it with other members is
refused, since the router and fleet eval already there would be kept.

Data: BFCL. The training categories (--train-categories, BFCL's live, user-contributed tasks) are split by a
seeded draw into the SFT student's training tasks and a disjoint calibration split (--calib-per-category per
category; a category with fewer tasks than --calib-per-category + --train-per-category, such as BFCL's 16
live_parallel tasks, is shared between the two in proportion); the held-out tasks are the non-live categories (--eval-categories). --calibrate-on held-out draws the
calibration split from the held-out categories' other tasks instead (requests like the traffic; the same training
and held-out tasks, results in a folder of their own). No task is in two splits, and
nothing is chosen by looking at held-out results: admission thresholds, the router's settings (chosen by
cross-validation on the calibration split, `fleet fit --predictor auto`) and the cascade policy are fixed before
the held-out evaluation is read.

Stages (each a distill command, printed, its output kept in --out and skipped on a rerun):
    import, split, pairs, train sft, eval <member> calib, eval <member> heldout,
    admit <member> (on its calibration report), fit (router on calibration), fleet eval (held-out verdicts),
    live: `distill serve` per member + `distill fleet serve` in front of them on 127.0.0.1, a handful of
    held-out requests answered live, and the live decisions compared with fleet eval's replayed ones.

Writes --results/fleet-<date>-<cpu|gpu>[-calibrated-on-held-out]/: fleet_eval.json, fleet_eval.md, pareto.png
(the selected router), clusters/ (the same with the k-means-only router, for comparison), live.json, results.json,
and README.md (the reading: each member and where it came from, targets met or missed, by how much, and why).
"""

from __future__ import annotations

import argparse
import datetime
import json
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from data_gen.local_models import INFO_FILE  # noqa: E402
from distill.demo import Stage, _rel  # noqa: E402
from distill.fleet.evaluate import placement_lines  # noqa: E402

TEACHER_TEMPLATE = "hermes_tool.jinja"
# The built-in members and where each comes from (the results README lists them)
BUILTIN = {
    "smollm2-base": "SmolLM2-135M-Instruct (pkg:smollm2-135m-instruct) with the Hermes tool template",
    "smollm2-sft": "LoRA SFT student of SmolLM2-135M-Instruct trained by this benchmark (recipes/demo/sft.yaml on "
                   "the training tasks' verified answers)",
    "gemma-fewshot": "Gemma 3 270M (pkg:gemma-3-270m), a base model, with the few-shot completion prompt",
}
MEMBERS = tuple(BUILTIN)
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


@dataclass(frozen=True)
class Extra:
    """A member added with --member NAME=SPEC: an existing student, evaluated and admitted, never trained here."""

    name: str
    spec: str  # as given: an adapter folder, a model folder or .gguf file, or a pkg: name
    kind: str  # "adapter" (a LoRA adapter folder) or "model"

    def model(self) -> str:
        """The path or name as the distill commands get it (a local path relative to the working directory)."""
        return self.spec if self.spec.startswith("pkg:") else _rel(Path(self.spec))

    def source(self) -> str:
        what = "LoRA adapter" if self.kind == "adapter" else "packaged model" if self.spec.startswith("pkg:") else "model"
        return f"--member {what} {self.spec}"


def parse_member(value: str, taken: set[str]) -> Extra:
    """An --member NAME=SPEC value, checked without loading anything; ValueError names what is wrong. `taken`: the
    member names already in use (the built-in ones and earlier --member values)."""
    name, sep, spec = value.partition("=")
    name, spec = name.strip(), spec.strip()
    if not sep or not name or not spec:
        raise ValueError("expected NAME=SPEC (SPEC: a LoRA adapter folder, a model folder or .gguf file, or pkg:NAME)")
    if not NAME_RE.fullmatch(name):
        raise ValueError(f"member name {name!r}: letters, digits, '.', '_' and '-' only, starting with a letter or digit")
    if name in BUILTIN:
        raise ValueError(f"member name {name!r} is a built-in member ({', '.join(BUILTIN)}); choose another")
    if name in taken:
        raise ValueError(f"member name {name!r} is given twice")
    if spec.startswith("pkg:"):
        from data_gen.local_models import cached_folder
        from eval.io import DistillError

        try:
            cached_folder(spec)  # known and installed (else a DistillError); nothing is converted or loaded
        except DistillError as e:
            raise ValueError(str(e)) from None
        return Extra(name, spec, "model")
    path = Path(spec)
    if not path.exists():
        raise ValueError(f"{spec}: no such adapter or model folder (nor a pkg: name)")
    if path.is_dir():
        if (path / "adapter_config.json").is_file():
            try:
                json.loads((path / "adapter_config.json").read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ValueError(f"{path / 'adapter_config.json'}: not valid JSON ({e})") from None
            return Extra(name, spec, "adapter")
        if (path / "config.json").is_file():
            return Extra(name, spec, "model")
        raise ValueError(f"{spec}: neither adapter_config.json (a LoRA adapter folder) nor config.json (a model folder)")
    if path.suffix.lower() == ".gguf":
        return Extra(name, spec, "model")
    raise ValueError(f"{spec}: a file that is not a .gguf model; give an adapter or model folder")


def members(args) -> list[str]:
    """Every member's name: the built-in ones, then --member's in the order given."""
    return [*MEMBERS, *(e.name for e in args.extra)]


def _extra(args, name: str) -> Extra | None:
    return next((e for e in getattr(args, "extra", ()) if e.name == name), None)


def _template() -> Path:
    for folder in ("data_gen/templates", "distill/templates"):  # where the Hermes tool template is shipped
        if (REPO / folder / TEACHER_TEMPLATE).is_file():
            return REPO / folder / TEACHER_TEMPLATE
    raise SystemExit(f"{TEACHER_TEMPLATE} not found in the checkout")


def member_model_args(name: str, out: Path, extra: Extra | None = None) -> list[str]:
    """The `distill eval` model flags of a member (`extra`: the --member it is)."""
    if extra is not None:
        return ["--adapter" if extra.kind == "adapter" else "--model", extra.model()]
    if name == "smollm2-base":
        return ["--model", "pkg:smollm2-135m-instruct", "--chat-template", _rel(_template())]
    if name == "smollm2-sft":
        return ["--adapter", _rel(out / "checkpoints" / "sft")]
    if name == "gemma-fewshot":
        return ["--model", "pkg:gemma-3-270m"]
    raise ValueError(name)


def serve_model_args(name: str, out: Path, extra: Extra | None = None) -> list[str]:
    """The `distill serve` model argument and flags of a member (the same model, template and adapter as its eval)."""
    if extra is not None:
        return [extra.model()]
    if name == "smollm2-base":
        return ["pkg:smollm2-135m-instruct", "--chat-template", _rel(_template())]
    if name == "smollm2-sft":
        return [_rel(out / "checkpoints" / "sft")]
    if name == "gemma-fewshot":
        return ["pkg:gemma-3-270m"]
    raise ValueError(name)


def calibration_count(n_tasks: int, calib_per_category: int, train_per_category: int) -> int:
    """How many of a training category's tasks the calibration split takes: --calib-per-category, or, in a category
    with fewer tasks than calibration and training ask for together, its share in proportion to the two (BFCL has 16
    live_parallel tasks: 60 calibration and 200 training tasks per category would leave the student none of them).
    With --train-per-category 0 (every remaining task), calibration comes first."""
    if not train_per_category or n_tasks >= calib_per_category + train_per_category:
        return min(calib_per_category, n_tasks)
    return round(n_tasks * calib_per_category / (calib_per_category + train_per_category))


def split_tasks(args) -> None:
    """train_tasks.jsonl, calib.jsonl and heldout.jsonl, disjoint, by a seeded draw per category. Calibration comes
    from the training categories (--calibrate-on training), or from the held-out categories' tasks that were not
    drawn as held-out (--calibrate-on held-out). Either way the training and held-out tasks are the same draw, so
    the two settings train the same students and score them on the same held-out tasks. --max-task-chars drops
    tasks whose JSON is longer (CPU runs: a few live_multiple tasks carry 20k+ characters of tool schemas, minutes
    of prompt for each member); 0 keeps every task."""
    from eval.io import read_jsonl, write_jsonl

    out = Path(args.out)
    rng = random.Random(args.seed)

    def by_category(path: Path) -> dict[str, list[dict]]:
        cats: dict[str, list[dict]] = {}
        for _, r in read_jsonl(path):
            if args.max_task_chars and len(json.dumps(r)) > args.max_task_chars:
                continue
            cats.setdefault(r["category"], []).append(r)
        return cats

    train, calib, held = [], [], []
    for cat, rows in sorted(by_category(out / "train_source.jsonl").items()):
        rows = sorted(rows, key=lambda r: r["id"])
        rng.shuffle(rows)
        n = calibration_count(len(rows), args.calib_per_category, args.train_per_category)
        if n < min(args.calib_per_category, len(rows)):
            print(f"fleet_quality.py: {cat} has {len(rows)} tasks, fewer than --calib-per-category "
                  f"{args.calib_per_category} + --train-per-category {args.train_per_category}: {n} go to calibration "
                  f"and {len(rows) - n} to training, in proportion", file=sys.stderr)
        if args.calibrate_on == "training":
            calib += rows[:n]
        train += rows[n: n + (args.train_per_category or len(rows))]
    for cat, rows in sorted(by_category(out / "heldout_source.jsonl").items()):
        rows = sorted(rows, key=lambda r: r["id"])
        rng.shuffle(rows)
        n = args.eval_per_category or len(rows)
        held += rows[:n]
        if args.calibrate_on == "held-out":
            if len(rows) < n + args.calib_per_category:
                raise SystemExit(f"fleet_quality.py: --calibrate-on held-out: {cat} has {len(rows)} tasks, fewer than "
                                 f"--eval-per-category {n} + --calib-per-category {args.calib_per_category}")
            calib += rows[n: n + args.calib_per_category]
    write_jsonl(out / "calib.jsonl", calib)
    write_jsonl(out / "heldout.jsonl", held)
    write_jsonl(out / "train_tasks.jsonl", train)  # last: its existence marks the stage done


def plan(args) -> list[Stage]:
    out = Path(args.out)
    o = lambda *parts: _rel(out.joinpath(*parts))  # noqa: E731
    ev = ["--batch-size", str(args.batch_size), "--max-new-tokens", str(args.max_new_tokens), "--device", args.device,
          "--dtype", args.dtype, "--temperature", "0"]
    stages = [
        Stage("import", "training categories", out / "train_source.jsonl",
              ["import", "bfcl", "--categories", args.train_categories, "--out", o("train_source.jsonl")]),
        Stage("import", "held-out categories", out / "heldout_source.jsonl",
              ["import", "bfcl", "--categories", args.eval_categories, "--out", o("heldout_source.jsonl")]),
        Stage("split", "training, calibration and held-out tasks (seeded draw per category)",
              out / "train_tasks.jsonl", ["python:split"]),
        Stage("pairs", "verified answers of the training tasks (SFT data)", out / "pairs" / "pairs_stats.json",
              ["pairs", "--tasks", o("train_tasks.jsonl"), "--chosen-from", "gold", "--synthetic", "1",
               "--max-pairs-per-task", "1", "--test-size", "0", "--seed", str(args.seed), "--out", o("pairs")]),
        Stage("train sft", f"SFT student: {args.steps} steps", out / "checkpoints" / "sft" / "adapter_model.safetensors",
              ["train", _rel(REPO / "recipes" / "demo" / "sft.yaml"), "--dataset_path", o("pairs"),
               "--per_device_train_batch_size", str(args.train_batch_size), "--use_cpu", str(args.device == "cpu").lower(),
               "--load_in_4bit", "false", "--max_length", str(args.max_length), "--output_dir", o("checkpoints", "sft"),
               "--max_steps", str(args.steps), "--save_steps", str(args.steps)]),
    ]
    if args.stop_after == "split":
        return stages[:3]
    names = members(args)
    for name in names:
        for split in ("calib", "heldout"):
            stages.append(Stage(f"eval {name} {split}", f"{name} on the {split} tasks",
                                out / "members" / name / split / "report.json",
                                ["eval", *member_model_args(name, out, _extra(args, name)), "--tasks",
                                 o(f"{split}.jsonl"), *ev, "--no-plots", "--out", o("members", name, split)]))
    if args.stop_after == "members":
        return stages
    fleet = o("fleet.yaml")
    for name in names:
        # Thresholds at 0: at this scale every member is weak on some category, and the router's learned predictor
        # decides; the abstention rule keeps its defaults (trusted where >= 75% of >= 10 no-call answers were right).
        stages.append(Stage(f"admit {name}", f"{name} into the fleet (from its calibration report)",
                            out / "admitted" / f"{name}.done",
                            ["fleet", "admit", o("members", name, "calib"), "--fleet", fleet, "--name", name,
                             "--min-accuracy", "0", "--min-schema-valid", "0", "--min-n", "10"]))
    verdicts = [x for name in names for x in ("--verdicts", f"{name}={o('members', name, 'heldout')}")]
    stages += [
        Stage("fit", "router on the calibration split (predictor chosen by cross-validation)",
              out / "router" / "router.json",
              ["fleet", "fit", "--fleet", fleet, "--tasks", o("calib.jsonl"), "--out", o("router"), "--alpha",
               str(args.alpha)]),
        Stage("fit clusters", "the k-means-only router, for comparison", out / "router-clusters" / "router.json",
              ["fleet", "fit", "--fleet", fleet, "--tasks", o("calib.jsonl"), "--out", o("router-clusters"),
               "--alpha", str(args.alpha), "--predictor", "clusters", "--no-register"]),
        Stage("fleet eval", "every strategy on the held-out verdicts", out / "fleet_eval" / "fleet_eval.json",
              ["fleet", "eval", "--fleet", fleet, "--tasks", o("heldout.jsonl"), *verdicts, "--out", o("fleet_eval")]),
        Stage("fleet eval clusters", "the same with the k-means-only router", out / "fleet_eval-clusters" / "fleet_eval.json",
              ["fleet", "eval", "--fleet", fleet, "--tasks", o("heldout.jsonl"), *verdicts, "--router",
               o("router-clusters"), "--out", o("fleet_eval-clusters"), "--no-plots"]),
        Stage("live", f"`fleet serve` before `distill serve` members, {args.live} held-out requests",
              out / "live.json", ["python:live"]),
    ]
    return stages


def _wait_up(url: str, proc, log: Path, what: str, timeout_s: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start; see {log}")
        time.sleep(0.5)


def live_serve_argv(args, name: str, port: int) -> list[str]:
    """The `distill serve` arguments of one member in the live stage: the model as it was evaluated, on
    --live-device (default: --device)."""
    return ["serve", *serve_model_args(name, Path(args.out), _extra(args, name)), "--served-name", name,
            "--port", str(port), "--device", args.live_device or args.device, "--dtype", args.dtype,
            "--max-new-tokens", str(args.max_new_tokens)]


def live_check(args) -> None:
    """Serve every member with `distill serve` and the fleet with `distill fleet serve` on 127.0.0.1, send --live
    held-out requests (the first of each category in turn), and compare what the fleet did live (the members asked,
    the one that answered) with what `fleet eval` replayed for the same tasks (decisions.jsonl, router+cascade at
    the router's alpha), and each live answer with the member's `distill eval` trace."""
    import fcntl

    import httpx
    import yaml

    from distill.testing.openai_stub import free_port
    from eval.io import read_jsonl, write_json

    out = Path(args.out)
    tasks = [r for _, r in read_jsonl(out / "heldout.jsonl")]
    by_cat: dict[str, list[dict]] = {}
    for t in tasks:
        by_cat.setdefault(t["category"], []).append(t)
    chosen, i = [], 0
    while len(chosen) < min(args.live, len(tasks)):
        for rows in by_cat.values():
            if i < len(rows) and len(chosen) < args.live:
                chosen.append(rows[i])
        i += 1
    ev = json.loads((out / "fleet_eval" / "fleet_eval.json").read_text())
    # `fleet serve` applies the abstention policy when it has the flag; without it, it accepts every no-call answer,
    # and its decisions are compared with the replay that does the same
    policy = "--abstain-policy" in subprocess.run([sys.executable, "-m", "distill", "fleet", "serve", "--help"],
                                                  capture_output=True, text=True).stdout
    strategy = f"router+cascade a={ev['router_alpha']:g}" + ("" if policy else " [accept]")
    replay = {d["task_id"]: d for _, d in read_jsonl(out / "fleet_eval" / "decisions.jsonl") if d["strategy"] == strategy}
    names = members(args)
    traces = {name: {t["task_id"]: t for _, t in read_jsonl(out / "members" / name / "heldout" / "traces.jsonl")}
              for name in names}
    logs = out / "logs"
    lock = open(args.lock, "a") if args.lock else None
    if lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # every member's model loaded at once: one heavy job
    procs = []
    try:
        fleet = yaml.safe_load((out / "fleet.yaml").read_text())
        ports = {}
        for name in names:
            ports[name] = free_port()
            log = logs / f"live_serve_{name}.log"
            cmd = [sys.executable, "-m", "distill", *live_serve_argv(args, name, ports[name])]
            procs.append((subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT), log, name))
        for m in fleet["members"]:
            m["endpoint"] = {"base_url": f"http://127.0.0.1:{ports[m['name']]}/v1", "model": m["name"]}
        fleet["router"]["path"] = "router"
        live_fleet = out / "fleet_live.yaml"
        live_fleet.write_text(yaml.safe_dump(fleet, sort_keys=False))
        fport = free_port()
        flog = logs / "live_fleet_serve.log"
        procs.append((subprocess.Popen([sys.executable, "-m", "distill", "fleet", "serve", "--fleet", str(live_fleet),
                                        "--port", str(fport), "--timeout", "600",
                                        *(["--abstain-policy", ev["abstain_policy"]] if policy else [])],
                                       stdout=open(flog, "w"), stderr=subprocess.STDOUT), flog, "fleet"))
        for proc, log, name in procs:
            port = fport if name == "fleet" else ports[name]
            _wait_up(f"http://127.0.0.1:{port}/health", proc, log, name)
        rows = []
        for t in chosen:
            t0 = time.time()
            r = httpx.post(f"http://127.0.0.1:{fport}/v1/chat/completions", timeout=1800, json={
                "model": "fleet", "messages": t["messages"], "tools": t["tools"], "temperature": 0,
                "max_tokens": args.max_new_tokens})
            msg = r.json()["choices"][0]["message"] if r.status_code == 200 else {}
            member = r.headers.get("x-distill-member")
            tried = [x for x in r.headers.get("x-distill-tried", "").split(",") if x]
            rep_ = replay[t["id"]]
            trace = traces.get(member, {}).get(t["id"], {})
            rows.append({"task_id": t["id"], "category": t["category"], "status": r.status_code,
                         "live": {"tried": tried, "answered_by": member, "verified": r.headers.get("x-distill-verified")},
                         "replayed": {"tried": rep_["tried"], "answered_by": rep_["answered_by"]},
                         "decision_matches": tried == rep_["tried"] and member == rep_["answered_by"],
                         "answer_matches_eval": msg.get("raw", msg.get("content")) == trace.get("raw"),
                         "seconds": round(time.time() - t0, 1)})
            print(f"  live {t['id']}: {tried} -> {member}; replayed {rep_['tried']} -> {rep_['answered_by']}",
                  file=sys.stderr, flush=True)
    finally:
        for proc, _, _ in procs:
            proc.terminate()
        for proc, _, _ in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if lock:
            lock.close()
    write_json(out / "live.json", {"strategy": strategy, "fleet_serve_abstain_policy": policy, "n": len(rows),
                                   "decisions_match": sum(r["decision_matches"] for r in rows),
                                   "answers_match": sum(r["answer_matches_eval"] for r in rows), "requests": rows})


HEAVY = ("eval", "train")  # the stages that load a model: one at a time on a shared machine (--lock)


def run(stages: list[Stage], args) -> dict:
    """Run each stage whose output is missing, printing its command first, each distill command in its own process
    (under `flock --lock` when it loads a model), its output in --out/logs/; returns {stage: seconds | 'skipped'}."""
    import fcntl
    import shlex

    timings = {}
    logs = Path(args.out) / "logs"
    held = None  # --hold-lock: the lock file, held from the first model stage to the last
    for i, s in enumerate(stages, 1):
        key = f"{i:02d} {s.name}"
        if s.done.exists():
            timings[key] = "skipped"
            continue
        print(f"[fleet {i}/{len(stages)}] {s.name}: {s.what}\n    distill {shlex.join(s.argv)}", file=sys.stderr, flush=True)
        t0 = time.time()
        if s.argv == ["python:split"]:
            split_tasks(args)
        elif s.argv == ["python:live"]:
            live_check(args)
        elif s.argv[:2] == ["fleet", "admit"]:  # a refusal (exit 1) is a result, not a failure
            rc = subprocess.run([sys.executable, "-m", "distill", *s.argv]).returncode
            if rc not in (0, 1):
                raise SystemExit(f"stage {s.name} failed (exit status {rc}); rerun to resume")
            s.done.parent.mkdir(parents=True, exist_ok=True)
            s.done.write_text(f"exit status {rc}\n")
        else:
            logs.mkdir(parents=True, exist_ok=True)
            heavy = args.lock and s.argv[0] in HEAVY
            if heavy and args.hold_lock and held is None:
                held = open(args.lock, "a")
                fcntl.flock(held, fcntl.LOCK_EX)
            lock = ["flock", args.lock] if heavy and held is None else []
            log = logs / f"{key.replace(' ', '_')}.log"
            with open(log, "a") as f:
                rc = subprocess.run([*lock, sys.executable, "-m", "distill", *s.argv], stdout=f, stderr=subprocess.STDOUT).returncode
            if rc != 0 or not s.done.exists():
                raise SystemExit(f"stage {s.name} failed (exit status {rc}); see {log}; rerun to resume")
        timings[key] = round(time.time() - t0, 1)
        print(f"[fleet {i}/{len(stages)}] {s.name}: {timings[key]} s", file=sys.stderr, flush=True)
        if held is not None and not any(x.argv[0] in HEAVY and not x.done.exists() for x in stages[i:]):
            held.close()  # no model stage left: let the next heavy job in (the live stage takes the lock itself)
            held = None
    if held is not None:
        held.close()
    return timings


def _row(rows: list[dict], name: str) -> dict:
    return next(r for r in rows if r["name"] == name)


def targets(ev: dict) -> dict:
    """The issue's targets on this run: routed (router or router+cascade at the router's alpha) >= best member + 10
    points at a lower mean cost than the dearest member; the router alone within 10 points of the oracle."""
    rows = ev["rows"]
    singles = [r for r in rows if r["kind"] == "single" and r["k"] == 1]
    best = max(singles, key=lambda r: r["accuracy"])
    dearest = max(singles, key=lambda r: r["cost"])
    a = ev["router_alpha"]
    router, both, oracle = _row(rows, f"router a={a:g}"), _row(rows, f"router+cascade a={a:g}"), _row(rows, "oracle")
    routed = max((router, both), key=lambda r: (r["accuracy"], -r["cost"]))
    return {
        "best_member": {"name": best["name"], "accuracy": best["accuracy"]},
        "dearest_member": {"name": dearest["name"], "cost": dearest["cost"]},
        "routed": {"name": routed["name"], "accuracy": routed["accuracy"], "cost": routed["cost"]},
        "oracle": oracle["accuracy"], "router_alone": router["accuracy"],
        "gain_over_best_points": round(100 * (routed["accuracy"] - best["accuracy"]), 1),
        "beats_best_by_10_at_lower_cost": routed["accuracy"] >= best["accuracy"] + 0.1 - 1e-9
        and routed["cost"] < dearest["cost"],
        "router_gap_to_oracle_points": round(100 * (oracle["accuracy"] - router["accuracy"]), 1),
        "router_within_10_of_oracle": router["accuracy"] >= oracle["accuracy"] - 0.1 - 1e-9,
    }


def member_sources(args) -> dict[str, dict]:
    """{member: {"source", "spec", "base_model", "adapter", "parameters", "cost", "categories", "abstains"}}: where
    each member came from, and what its fleet.yaml entry says (the model and adapter its evaluation loaded, its
    cost: parameters in billions, an adapter's being its base model's)."""
    import yaml

    path = Path(args.out) / "fleet.yaml"
    fleet = yaml.safe_load(path.read_text()) or {}
    entries = {m["name"]: m for m in fleet.get("members") or []}

    def where(value):  # fleet.yaml keeps local paths relative to itself; as the user types them here
        if value is None or not (path.parent / value).exists():
            return value
        folder = path.parent / value
        if (folder / INFO_FILE).is_file():
            # a folder distill converted a pkg: model or .gguf file into: name what it came from, not this
            # machine's cache path
            source = json.loads((folder / INFO_FILE).read_text()).get("source")
            if source:
                return str(source)
        return _rel(folder.resolve())

    out = {}
    for name in members(args):
        extra, e = _extra(args, name), entries.get(name, {})
        out[name] = {"source": extra.source() if extra else BUILTIN[name], "spec": extra.spec if extra else None,
                     "base_model": where(e.get("base_model")), "adapter": where(e.get("adapter")),
                     **{k: e.get(k) for k in ("parameters", "cost", "categories", "abstains")}}
    return out


def results_folder(args) -> Path:
    """--results/fleet-<date>-<cpu|gpu>, with -calibrated-on-held-out when the calibration split came from the
    held-out categories (a run under the protocol and one calibrated on requests like the traffic sit side by side)."""
    name = f"fleet-{datetime.date.today().isoformat()}-{'gpu' if args.device == 'cuda' else 'cpu'}"
    return Path(args.results) / (name + ("-calibrated-on-held-out" if args.calibrate_on == "held-out" else ""))


def write_results(args, timings: dict) -> Path:
    """benchmarks/results/fleet-<date>-<device>/: fleet eval outputs, the clusters-only comparison, live.json, and
    results.json with the targets and the run's settings."""
    import shutil

    from eval.io import write_json

    out = Path(args.out)
    folder = results_folder(args)
    (folder / "clusters").mkdir(parents=True, exist_ok=True)
    for name in ("fleet_eval.json", "fleet_eval.md", "pareto.png"):
        shutil.copy(out / "fleet_eval" / name, folder / name)
    for name in ("fleet_eval.json", "fleet_eval.md"):
        shutil.copy(out / "fleet_eval-clusters" / name, folder / "clusters" / name)
    shutil.copy(out / "live.json", folder / "live.json")
    ev = json.loads((out / "fleet_eval" / "fleet_eval.json").read_text())
    router = json.loads((out / "router" / "router.json").read_text())
    members = member_sources(args)
    for name in members:
        for split in ("calib", "heldout"):
            rep_ = json.loads((out / "members" / name / split / "report.json").read_text())
            members[name][split] = {
                "n": rep_["n"], "strict_accuracy": rep_["strict_accuracy"],
                "by_category": {c: v["strict_accuracy"] for c, v in rep_["by_category"].items()},
                "errors": rep_["errors"],
                # the devices that generated the answers: a member evaluated on another machine (or resumed there)
                # says so in the results
                "ran_on": (rep_.get("generation") or {}).get("ran_on")}
    write_json(folder / "results.json", {
        "date": datetime.date.today().isoformat(), "device": args.device,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "results", "lock", "stop_after", "extra")},
        "targets": targets(ev), "members": members, "router": {
            "predictor": router["predictor"], "cross_validation": router["cross_validation"],
            "embedder": router["embedder"], "alpha": router["alpha"]},
        "stage_seconds": timings})
    res = json.loads((folder / "results.json").read_text())
    readme = folder / "README.md"
    text = reading(res, ev, json.loads((out / "live.json").read_text()))
    if readme.is_file() and "## Why" in readme.read_text():  # keep an analysis written by hand below the numbers
        text += readme.read_text()[readme.read_text().index("## Why"):]
    readme.write_text(text)
    return folder


DEVICE_NAMES = {"cpu": "CPU", "cuda": "GPU"}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def reading(res: dict, ev: dict, live: dict) -> str:
    """README.md of the results folder: the setup, the members per category, the headline rows, the targets (met or
    missed, by how much) and the live check; the analysis of why is added by hand below it."""
    t, s = res["targets"], res["settings"]
    a = ev["router_alpha"]
    rows = {r["name"]: r for r in ev["rows"]}
    calibration = (s["train_categories"] if s.get("calibrate_on", "training") == "training"
                   else f"{s['eval_categories']} (other tasks than the held-out ones)")
    lines = [f"# The real fleet, {res['date']} ({res['device']})", "",
             f"{'CPU scale' if res['device'] == 'cpu' else 'GPU run'}: held-out BFCL {s['eval_categories']} "
             f"({s['eval_per_category']} per category, {ev['n']} tasks), calibration {calibration} "
             f"({s['calib_per_category']} per category); SFT student: {s['steps']} steps of {s['train_batch_size']} on "
             f"{s['train_per_category']} training tasks per category; greedy, at most {s['max_new_tokens']} new tokens. "
             f"Router: embedder {res['router']['embedder']}, predictor {res['router']['predictor']} (chosen by "
             f"cross-validation on calibration), alpha {a:g}; abstention policy {ev['abstain_policy']}. Costs: "
             f"parameters in billions. Accuracy is strict; ±: 95% interval half-width.", "",
             "Members:", ""]
    for name, m in res["members"].items():
        cost = "" if m.get("cost") is None else f"; cost {m['cost']:.3g}"
        model = "" if not m.get("base_model") else f"; base model {m['base_model']}" + (
            f", adapter {m['adapter']}" if m.get("adapter") else "")
        where = sorted({d for split in ("calib", "heldout") for d in (m.get(split) or {}).get("ran_on") or []})
        ran = (f"; answers generated on {' and '.join(d.replace('unrecorded', 'a device not recorded') for d in where)}"
               if where else "")
        lines.append(f"- {name}: {m.get('source') or 'unknown'}{model}{cost}{ran}")
    if any(m.get("spec") for m in res["members"].values()):
        lines += ["", "A --member student was trained elsewhere, on data this benchmark does not know: where that data "
                  "shares tasks with the calibration split, its calibration accuracy, and the router's trust in it, "
                  "are optimistic; the held-out tasks (non-live BFCL categories) stay unseen only if it never trained "
                  "on them."]
    lines += ["",
             "| member | calibration | held-out | " + " | ".join(ev_cat for ev_cat in s["eval_categories"].split(",")) + " |",
             "| --- | ---: | ---: |" + " ---: |" * len(s["eval_categories"].split(","))]
    for name, m in res["members"].items():
        lines.append(f"| {name} | {_pct(m['calib']['strict_accuracy'])} | {_pct(m['heldout']['strict_accuracy'])} | "
                     + " | ".join(_pct(m["heldout"]["by_category"].get(c)) for c in s["eval_categories"].split(","))
                     + " |")
    lines += ["", "| strategy | accuracy | ± | cost | answered by |", "| --- | ---: | ---: | ---: | --- |"]
    for name in [*res["members"], "oracle", "cascade", "cascade [accept]", f"router a={a:g}", f"router+cascade a={a:g}",
                 f"router+cascade a={a:g} [accept]", f"router+cascade a={a:g} [every rung]"]:
        if name in rows:
            r = rows[name]
            who = ", ".join(f"{k} {v}" for k, v in r["answered_by"].items())
            lines.append(f"| {name} | {r['accuracy']:.3f} | {r['ci95']:.3f} | {r['cost']:.3g} | {who} |")
    met = lambda ok: "met" if ok else "missed"  # noqa: E731
    lines += ["", "Targets:",
              f"- routed ({t['routed']['name']}) {t['routed']['accuracy']:.3f} against the best member "
              f"({t['best_member']['name']}) {t['best_member']['accuracy']:.3f}: {t['gain_over_best_points']:+.1f} points "
              f"(target +10) at mean cost {t['routed']['cost']:.3g} against the dearest member's "
              f"{t['dearest_member']['cost']:.3g}: {met(t['beats_best_by_10_at_lower_cost'])}"
              + ("" if t["beats_best_by_10_at_lower_cost"] else
                 f", by {max(0.0, 10 - t['gain_over_best_points']):.1f} points"),
              f"- router alone {t['router_alone']:.3f} against the oracle {t['oracle']:.3f}: "
              f"{t['router_gap_to_oracle_points']:.1f} points below (target: within 10): "
              f"{met(t['router_within_10_of_oracle'])}"
              + ("" if t["router_within_10_of_oracle"] else f", by {t['router_gap_to_oracle_points'] - 10:.1f} points"),
              "", f"Live: `distill fleet serve` before {len(res['members'])} `distill serve` members on 127.0.0.1 answered {live['n']} "
              f"held-out requests; the members asked and the one that answered matched the replayed decisions "
              f"({live['strategy']}) for {live['decisions_match']} of {live['n']}, and the answer text matched the "
              f"member's `distill eval` trace for {live['answers_match']} of {live['n']}."
              + ("" if live.get("fleet_serve_abstain_policy") else
                 " (`fleet serve` had no abstention policy yet, so the replay compared is the one that accepts every "
                 "no-call answer.)")
              + ("" if (s.get("live_device") or s.get("device", "cpu")) == s.get("device", "cpu") else
                 f" The live members ran on the {DEVICE_NAMES[s['live_device']]}, their evaluations on the "
                 f"{DEVICE_NAMES[s['device']]}: a greedy "
                 "answer can differ between the two, and with it the decision."), ""]
    if ev.get("placement"):  # calibration on live categories, held-out on non-live ones: where did requests go?
        lines += [*placement_lines(ev["placement"], a), ""]
    return "\n".join(lines) + "\n"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/fleet_quality", help="working folder, resumed on rerun (default: %(default)s)")
    p.add_argument("--results", default=str(REPO / "benchmarks" / "results"), help="where the results folder goes")
    p.add_argument("--train-categories", default="live_simple,live_multiple,live_irrelevance",
                   help="BFCL categories for training and calibration (default: %(default)s)")
    p.add_argument("--eval-categories", default="simple_python,multiple,irrelevance",
                   help="held-out BFCL categories (default: %(default)s)")
    p.add_argument("--calib-per-category", type=int, default=20, help="calibration tasks per category")
    p.add_argument("--calibrate-on", choices=("training", "held-out"), default="training",
                   help="where the calibration split comes from: the training categories (the protocol: calibration "
                   "from the kind of data the students trained on) or the held-out categories' tasks not drawn as "
                   "held-out (requests like the traffic, as from logged requests; results go to a folder ending "
                   "-calibrated-on-held-out). The training and held-out tasks are the same either way "
                   "(default: %(default)s)")
    p.add_argument("--train-per-category", type=int, default=40, help="SFT tasks per training category, 0 = the rest")
    p.add_argument("--eval-per-category", type=int, default=20, help="held-out tasks per category, 0 = all")
    p.add_argument("--max-task-chars", type=int, default=6000,
                   help="drop tasks whose JSON is longer than this (CPU time); 0 keeps all (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the SFT data (default: %(default)s)")
    p.add_argument("--steps", type=int, default=12, help="SFT optimizer steps (default: %(default)s)")
    p.add_argument("--train-batch-size", type=int, default=4, help="examples per SFT step (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=2048, help="SFT sequence cap in tokens (default: %(default)s)")
    p.add_argument("--max-new-tokens", type=int, default=128, help="answer length cap when evaluating")
    p.add_argument("--batch-size", type=int, default=8, help="prompts per generate() call when evaluating")
    p.add_argument("--dtype", default="float32", help="weights when evaluating (default: %(default)s)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="(default: %(default)s)")
    p.add_argument("--hold-lock", action="store_true",
                   help="with --lock: take the lock once, before the first model stage, and keep it until the last "
                   "(one turn on a busy machine instead of one per stage)")
    p.add_argument("--alpha", type=float, default=0.9, help="the router's accuracy weight (default: %(default)s)")
    p.add_argument("--live", type=int, default=6, help="held-out requests answered live (default: %(default)s)")
    p.add_argument("--lock", default=None, help="run every training and evaluation under `flock LOCK` (a shared machine)")
    p.add_argument("--member", action="append", default=[], metavar="NAME=SPEC",
                   help="add an existing student to the fleet without training it (repeatable): SPEC is a LoRA adapter "
                   "folder (with adapter_config.json, e.g. a checkpoint of benchmarks/quality.py's working folder), a "
                   "model folder or .gguf file, or pkg:NAME; it is evaluated, admitted, routed and served like the "
                   "built-in members, its cost its (base) model's parameters in billions")
    p.add_argument("--stop-after", default=None, choices=["split", "members"],
                   help="stop after the split (the task files, e.g. to evaluate a member elsewhere into "
                   "OUT/members/NAME/{calib,heldout}/, which the run then skips) or after the member evaluations")
    p.add_argument("--live-device", default=None, choices=["cpu", "cuda"],
                   help="where the live stage serves the members (default: --device): cpu to finish on a CPU a run "
                   "whose members were evaluated on a GPU machine that cannot hold every member's model")
    args = p.parse_args(argv)
    args.extra = []
    for value in args.member:  # checked here, before any stage runs or any model loads
        try:
            args.extra.append(parse_member(value, {e.name for e in args.extra}))
        except ValueError as e:
            p.error(f"--member {value}: {e}")
    return args


def check_members_file(args) -> None:
    """The working folder records the members it was run with (members.json); a rerun with other members would
    skip the stages whose outputs exist (the router, fleet eval) and report a fleet without them, so it is refused
    (exit 2). A folder from before members.json was written holds the built-in members."""
    out = Path(args.out)
    path = out / "members.json"
    want = {**{name: "built-in" for name in MEMBERS}, **{e.name: e.spec for e in args.extra}}
    if path.is_file():
        have = json.loads(path.read_text())
    elif (out / "fleet.yaml").is_file():
        have = {name: "built-in" for name in MEMBERS}
    else:
        have = None
    if have is not None and have != want:
        print(f"fleet_quality.py: {out} was run with the members {have}, this run asks for {want}: use another --out "
              f"(member evaluations in {out / 'members'} can be copied over to skip them)", file=sys.stderr)
        raise SystemExit(2)
    from eval.io import write_json

    out.mkdir(parents=True, exist_ok=True)
    write_json(path, want)


def main(argv=None) -> int:
    args = parse_args(argv)
    check_members_file(args)
    start = time.time()
    timings = run(plan(args), args)
    timings["total"] = round(time.time() - start, 1)
    print(json.dumps(timings, indent=1), file=sys.stderr)
    if args.stop_after:
        return 0
    folder = write_results(args, timings)
    print(json.dumps(targets(json.loads((Path(args.out) / "fleet_eval" / "fleet_eval.json").read_text())), indent=1))
    print(f"wrote {folder} (the reading goes in its README.md)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
