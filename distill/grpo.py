"""GRPO with the verifier as the reward: `stage: grpo` recipes train a student on a tasks file, no pairs needed.

    # recipes/debug/tiny_cpu_grpo.yaml (excerpt)
    stage: grpo
    dataset_path: recipes/debug/tiny/tasks.jsonl     # a tasks .jsonl file (distill import ...), with `expected`
    reward: fine                                     # or binary, or a list of components
    num_generations: 8                               # answers per task in a group
    max_completion_length: 96

    distill train recipes/debug/tiny_cpu_grpo.yaml

Each task becomes one prompt row, rendered with the student's chat template and the task's own tools exactly as
`distill eval` renders it, plus its `task_id`. TRL's GRPOTrainer samples `num_generations` answers per prompt
with its own generation paths (transformers `generate`, or vLLM with `use_vllm: true`), and the reward functions
here score each answer in the trainer process: the answer is decoded the way `distill eval` decodes it, parsed by
`eval.parse.parse_output` and judged by `eval.verify.judge` against the task's expected calls.

Reward components, each in [0, 1] for one answer (an answer that makes the wrong decision, i.e. is unparseable,
calls nothing where a call is needed, or calls anything on an irrelevance task, scores 0 on every component; a
correct abstention scores 1 on every component):

    correct    1 when the answer is right by BFCL's rules (the verdict's `correct`), else 0
    format     1 when the answer parses and calls when calls are expected
    schema     1 when every call names an offered tool and its arguments pass that tool's JSON Schema and BFCL's
               stricter checks (no argument outside the listed properties, required ones present, types)
    function   multiset Jaccard overlap of the called and expected function names
    arguments  per expected call (paired with a same-named call, best pairs first), the share of its arguments
               that are acceptable by BFCL's value rules (an optional argument left out counts; an extra one
               counts against), summed and divided by max(#expected, #calls)

The reward is the weighted sum (TRL's `reward_weights`); TRL logs each component's mean (`rewards/<name>/mean`),
the total (`reward`) and the share of prompt groups whose answers all scored the same (`frac_reward_zero_std`:
those groups teach nothing). Presets: `binary` = correct; `fine` = correct 0.5, format 0.1, schema 0.1,
function 0.1, arguments 0.2 (a correct answer scores 1 either way), in the spirit of ToolRL (arXiv 2504.13958).

Why the prompts are rendered here: GRPOTrainer in TRL 1.16 renders every prompt with one trainer-wide `tools`
list of Python callables, which it also executes; it does not read a per-row `tools` column as SFT and DPO do.
Tasks carry different tools per row and BFCL tools cannot run, so the rows hold the rendered text instead.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from eval import match as m
from eval.io import DistillError
from eval.parse import MALFORMED, parse_output
from eval.tasks import Task, file_fingerprint, load_tasks
from eval.verify import judge

if TYPE_CHECKING:  # the real class, for type checkers; built lazily at run time (see __getattr__)
    from trl import GRPOConfig

    class VerifierGRPOConfig(GRPOConfig):  # noqa: D101
        reward: list[str]

        def reward_spec(self) -> RewardSpec: ...


logger = logging.getLogger(__name__)

COMPONENTS = ("correct", "format", "schema", "function", "arguments")
PRESETS: dict[str, dict[str, float]] = {
    "binary": {"correct": 1.0},
    "fine": {"correct": 0.5, "format": 0.1, "schema": 0.1, "function": 0.1, "arguments": 0.2},
}
DEFAULT_REWARD = "fine"

# Verdict errors that mean the answer took the wrong decision (call or not): no component gives credit.
_WRONG_DECISION = ("malformed", "no_call", "unexpected_call")


# --- the reward's configuration ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RewardSpec:
    """Which components make the reward and their weights (TRL's `reward_weights`, in the same order)."""

    components: tuple[str, ...]
    weights: tuple[float, ...]
    preset: str | None = None  # 'binary' or 'fine' when the recipe named a preset

    def to_dict(self) -> dict:
        return {"preset": self.preset, "components": dict(zip(self.components, self.weights, strict=True))}


def resolve_reward(reward, weights=None) -> RewardSpec:
    """The RewardSpec for a recipe's `reward` (a preset name, a component name, a comma-separated string or a
    list of them) and `reward_weights` (None: the preset's weights, or 1 per component)."""
    names = [reward] if isinstance(reward, str) else list(reward or [])
    names = [n.strip() for name in names for n in str(name).split(",") if n.strip()]
    if not names:
        raise DistillError(
            f"reward: name a preset ({', '.join(PRESETS)}) or components ({', '.join(COMPONENTS)})"
        )
    preset = None
    if len(names) == 1 and names[0] in PRESETS:
        preset = names[0]
        components, default = tuple(PRESETS[preset]), tuple(PRESETS[preset].values())
    else:
        unknown = [n for n in names if n not in COMPONENTS]
        if unknown:
            raise DistillError(
                f"reward: unknown component(s) {', '.join(map(repr, unknown))}; components are "
                f"{', '.join(COMPONENTS)}, presets {', '.join(PRESETS)} (a preset stands alone)"
            )
        if len(set(names)) != len(names):
            raise DistillError(f"reward: a component is named twice in {names}")
        components, default = tuple(names), (1.0,) * len(names)
    if weights is None:
        return RewardSpec(components, default, preset)
    weights = tuple(float(w) for w in weights)
    if len(weights) != len(components):
        raise DistillError(
            f"reward_weights: {len(weights)} weight(s) for {len(components)} reward component(s) "
            f"({', '.join(components)})"
        )
    return RewardSpec(components, weights, preset)


@dataclass
class GRPORewardFields:
    """What a `stage: grpo` recipe adds to TRL's GRPOConfig; TRL's own `reward_weights` weighs the components."""

    reward: list[str] = field(
        default_factory=lambda: [DEFAULT_REWARD],
        metadata={
            "help": "Reward from the verifier: a preset, 'binary' (1 when correct by BFCL's rules, else 0) or "
            "'fine' (correct 0.5 + format 0.1 + schema 0.1 + function 0.1 + arguments 0.2; a correct answer "
            "scores 1), or a list of components (correct, format, schema, function, arguments) weighed by "
            "reward_weights (default 1 each). See docs/grpo.md.",
        },
    )


@functools.cache
def _verifier_grpo_config_class() -> type:
    from trl import GRPOConfig

    # GRPORewardFields first in the bases so that its fields come after GRPOConfig's (dataclasses collect fields
    # from the last base to the first); GRPOConfig's __post_init__ still runs.
    @dataclass
    class VerifierGRPOConfig(GRPORewardFields, GRPOConfig):
        """TRL's GRPOConfig plus the verifier reward's key (distill.grpo.GRPORewardFields)."""

        def __post_init__(self):
            super().__post_init__()
            # A YAML string arrives as a str, flags as a list; resolve_reward accepts both and checks the names,
            # so a bad reward fails when the recipe is parsed, before any weights load.
            self.reward = [self.reward] if isinstance(self.reward, str) else list(self.reward)
            self.reward_weights = list(resolve_reward(self.reward, self.reward_weights).weights)

        def reward_spec(self) -> RewardSpec:
            return resolve_reward(self.reward, self.reward_weights)

    # pickles (the Trainer's training_args.bin) find the class through the module's __getattr__ below
    VerifierGRPOConfig.__module__, VerifierGRPOConfig.__qualname__ = __name__, "VerifierGRPOConfig"
    return VerifierGRPOConfig


def __getattr__(name: str):
    # Building the class imports TRL (and torch): only when a recipe of stage grpo is parsed or trained, so that
    # the reward functions above load with the verifier alone.
    if name == "VerifierGRPOConfig":
        cls = _verifier_grpo_config_class()
        globals()["VerifierGRPOConfig"] = cls
        return cls
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# --- scoring one answer (pure) ------------------------------------------------------------------------------------


def _name_jaccard(calls: list[dict], expected) -> float:
    called, wanted = Counter(c["name"] for c in calls), Counter(e.name for e in expected)
    union = sum((called | wanted).values())
    return sum((called & wanted).values()) / union if union else 1.0


def _argument_ok(exp, name: str, value) -> bool:
    """Whether one argument's value is acceptable for one expected call, by BFCL's value and type rules: the
    matcher's own check_call on a copy of the expected call reduced to that argument (nothing required)."""
    single = dataclasses.replace(exp, required=(), params={name: exp.params[name]})
    kind, _ = m.check_call(single, {"name": exp.name, "arguments": {name: value}})
    return kind == m.OK


def _pair_score(exp, arguments: dict) -> float:
    keys = set(exp.params) | set(arguments)
    if not keys:
        return 1.0
    good = 0
    for key in keys:
        if key in arguments:
            good += key in exp.params and _argument_ok(exp, key, arguments[key])
        else:
            good += exp.params[key].optional
    return good / len(keys)


def _arguments_score(expected, calls: list[dict]) -> float:
    """Expected and output calls of the same name are paired best-first (the highest-scoring pair, then the best
    of what is left), so the order of parallel calls does not matter; the sum is divided by the larger of the
    two counts, so missing and extra calls both cost."""
    pairs = sorted(
        (
            (_pair_score(exp, call["arguments"]), i, j)
            for i, exp in enumerate(expected)
            for j, call in enumerate(calls)
            if call["name"] == exp.name
        ),
        key=lambda p: -p[0],
    )
    used_expected, used_calls, total = set(), set(), 0.0
    for score, i, j in pairs:
        if i not in used_expected and j not in used_calls:
            used_expected.add(i)
            used_calls.add(j)
            total += score
    return total / max(len(expected), len(calls))


def score_answer(task: Task, text: str) -> tuple[dict[str, float], str]:
    """({component: score in [0, 1]}, verdict error) for one answer text to one task. Never raises: the text
    is untrusted model output, read only by the parser."""
    parsed = parse_output(text)
    correct, schema_valid, error, _ = judge(task, parsed)
    if parsed.status == MALFORMED or error in _WRONG_DECISION:
        return dict.fromkeys(COMPONENTS, 0.0), error
    calls = parsed.calls or []
    if not calls:  # judge found no error in an answer without calls: a correct abstention
        return dict.fromkeys(COMPONENTS, 1.0), error
    expected = task.matcher
    return {
        "correct": float(correct),
        "format": 1.0,
        # the verdict's schema_violation also covers what BFCL refuses and a lenient JSON Schema lets through (an
        # argument outside the listed properties, a wrong Python type)
        "schema": float(schema_valid and error not in ("schema_violation", "unknown_function")),
        "function": _name_jaccard(calls, expected),
        "arguments": _arguments_score(expected, calls),
    }, error


def total_reward(scores: dict[str, float], spec: RewardSpec) -> float:
    return sum(w * scores[c] for c, w in zip(spec.components, spec.weights, strict=True))


# --- the reward functions TRL calls -------------------------------------------------------------------------------


class VerifierReward:
    """Scores GRPO completions against their tasks. `functions()` gives one TRL reward function per component
    (named after it, so TRL logs `rewards/<component>/mean`); they share one scoring pass per batch.

        reward = VerifierReward(tasks, spec, tokenizer=tok, stop_ids={tok.eos_token_id})
        GRPOTrainer(..., reward_funcs=reward.functions(), args=VerifierGRPOConfig(reward=["fine"], ...))

    Completions are decoded from their token ids as `distill eval` decodes them (special tokens kept, generation
    cut at the first stop token), since some chat formats mark calls with special tokens; without a tokenizer
    the trainer's decoded text is used."""

    def __init__(self, tasks: dict[str, Task], spec: RewardSpec, *, tokenizer=None, stop_ids=()):
        self.tasks = tasks
        self.spec = spec
        self.tokenizer = tokenizer
        self.stop_ids = {i for i in stop_ids if i is not None}
        # The completions list of the batch scored last, held so that its id cannot be reused by another list.
        self._batch_key = None
        self._batch_scores: list[dict[str, float]] = []
        self.answers = 0
        self.seconds = 0.0
        self.errors: Counter = Counter()

    def functions(self) -> list:
        return [_ComponentReward(self, c) for c in self.spec.components]

    def text_of(self, completion, ids) -> str:
        if self.tokenizer is not None and ids is not None:
            ids = list(ids)
            for j, tok in enumerate(ids):
                if tok in self.stop_ids:
                    ids = ids[:j]
                    break
            return self.tokenizer.decode(ids, skip_special_tokens=False)
        if isinstance(completion, list):  # conversational: [{"role": "assistant", "content": ...}]
            return "".join(str(msg.get("content") or "") for msg in completion)
        return str(completion)

    def score_batch(
        self, completions, completion_ids, task_ids, log_metric=None, log_extra=None
    ) -> list[dict]:
        if completions is self._batch_key:
            return self._batch_scores
        start = time.perf_counter()
        ids_list = completion_ids if completion_ids is not None else [None] * len(completions)
        scores, errors = [], []
        for completion, ids, task_id in zip(completions, ids_list, task_ids, strict=True):
            task = self.tasks.get(task_id)
            if task is None:
                raise DistillError(f"reward: task {task_id!r} is not in the tasks the reward was built with")
            s, error = score_answer(task, self.text_of(completion, ids))
            scores.append(s)
            errors.append(error)
        elapsed = time.perf_counter() - start
        self.answers += len(scores)
        self.seconds += elapsed
        self.errors.update(errors)
        if log_metric is not None and elapsed > 0:
            log_metric("verifier/answers_per_s", len(scores) / elapsed)
        if log_extra is not None:
            log_extra("verdict", errors)
        self._batch_key, self._batch_scores = completions, scores
        return scores

    def summary(self) -> dict:
        """For run.json: the reward's configuration, how many answers it scored, how fast, and their errors."""
        return {
            **self.spec.to_dict(),
            "answers_scored": self.answers,
            "scoring_seconds": round(self.seconds, 4),
            "answers_per_s": round(self.answers / self.seconds) if self.seconds else None,
            "errors": dict(self.errors.most_common()),
        }


class _ComponentReward:
    """One component as a TRL reward function: `f(prompts, completions, completion_ids, **columns) -> [float]`;
    TRL passes the dataset's other columns (here `task_id`) as keyword arguments."""

    def __init__(self, reward: VerifierReward, component: str):
        self.reward = reward
        self.component = component
        self.__name__ = component  # TRL names the logged metric after it

    def __call__(
        self, prompts, completions, completion_ids=None, task_id=None, log_metric=None, log_extra=None, **_
    ):
        if task_id is None:
            raise DistillError(
                "reward: the dataset has no task_id column (build it with distill.grpo.build_dataset)"
            )
        scores = self.reward.score_batch(completions, completion_ids, task_id, log_metric, log_extra)
        return [s[self.component] for s in scores]


# --- data ---------------------------------------------------------------------------------------------------------


def check_tasks_path(path: str | None) -> None:
    """Refuse what cannot be a tasks file before anything loads: a folder (a preference dataset from `distill
    pairs`, most likely) or a file of another kind. A path that does not exist yet is checked at start."""
    if not path:
        raise DistillError("key 'dataset_path' is required: stage grpo trains on a tasks .jsonl file")
    p = Path(path)
    if p.is_dir():
        pairs = (p / "dataset_dict.json").is_file() or (p / "dataset").is_dir()
        raise DistillError(
            f"key 'dataset_path': {path} is {'a preference dataset' if pairs else 'a folder'}; stage grpo trains "
            "on a tasks .jsonl file (each task with its expected calls, e.g. from `distill import bfcl`), not on "
            "pairs"
        )
    if p.suffix not in (".jsonl", ".json"):
        raise DistillError(f"key 'dataset_path': {path} is not a tasks .jsonl file")


def check_recipe(script, training, where: str) -> None:
    """What a grpo recipe must satisfy, checked when it is parsed (no weights, no data read)."""
    try:
        check_tasks_path(script.dataset_path)
    except DistillError as e:
        raise DistillError(f"{where}: {e}") from None
    if training.eval_strategy != "no":
        raise DistillError(
            f"{where}: key 'eval_strategy' must be 'no' for stage grpo (it has no eval split); score the "
            "student on held-out tasks with `distill eval`"
        )
    if training.use_vllm and importlib.util.find_spec("vllm") is None:
        raise DistillError(f"{where}: key 'use_vllm' is true but vLLM is not installed (pip install vllm)")


def load_train_tasks(path: str) -> dict[str, Task]:
    """The tasks of a GRPO run, checked by `eval.tasks.load_tasks` (every task needs `expected`, the calls the
    reward compares against). Raises DistillError naming the file and line."""
    check_tasks_path(path)
    if not Path(path).is_file():
        raise DistillError(f"key 'dataset_path': {path}: no such tasks file")
    try:
        return load_tasks(path)
    except DistillError as e:
        raise DistillError(
            f"key 'dataset_path': {e} (stage grpo needs every task with its expected calls)"
        ) from None


def prepare_data(dataset_path: str, tokenizer):
    """(tasks by id, {"train": prompt rows}, audit): what `distill train` reads for stage grpo, before any
    weights load."""
    tasks = load_train_tasks(dataset_path)
    rows, audit = build_dataset(tasks, tokenizer)
    return tasks, {"train": rows}, audit


def trainer_prompt_text(tokenizer, text: str) -> tuple[str, int]:
    """(text, token count) such that the tokenizer's default call, which GRPOTrainer uses on text prompts, gives
    the same ids as the chat-template text tokenized without added special tokens (what `distill eval` feeds the
    model). Tokenizers that add a BOS themselves would otherwise get two when the template writes one too."""
    plain = tokenizer(text, add_special_tokens=False)["input_ids"]
    if tokenizer(text)["input_ids"] == plain:
        return text, len(plain)
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer(text[len(bos) :])["input_ids"] == plain:
        return text[len(bos) :], len(plain)
    raise DistillError(
        "the tokenizer adds special tokens to the chat template's text that the template does not start with; "
        "GRPO prompts would differ from distill eval's"
    )


def build_dataset(tasks: dict[str, Task], tokenizer):
    """(datasets.Dataset with columns prompt (text) and task_id, audit dict of prompt token lengths)."""
    from datasets import Dataset

    from data_gen.prompting import render_prompt
    from distill.preflight import percentiles

    rows, lengths = [], []
    for task in tasks.values():
        try:
            text, completion_prompt = render_prompt(tokenizer, task.messages, task.tools)
        # The template is Jinja from the model's repository: any exception it raises is the template's fault.
        except Exception as e:
            raise DistillError(
                f"task {task.id!r}: the chat template fails on it ({type(e).__name__}: {e})"
            ) from None
        if completion_prompt:
            raise DistillError("stage grpo needs a chat template (set chat_template in the recipe)")
        text, n = trainer_prompt_text(tokenizer, text)
        rows.append({"prompt": text, "task_id": task.id})
        lengths.append(n)
    categories = Counter(t.category for t in tasks.values())
    irrelevance = sum(1 for t in tasks.values() if not t.expected)
    audit = {
        "rows": len(rows),
        "prompt": percentiles(lengths),
        "categories": dict(categories),
        "irrelevance_tasks": irrelevance,
    }
    return Dataset.from_list(rows), audit


# --- the trainer --------------------------------------------------------------------------------------------------


def build_trainer(
    model,
    args: VerifierGRPOConfig,
    tasks: dict[str, Task],
    train_dataset,
    tokenizer,
    *,
    stop_ids=(),
    peft_config=None,
    callbacks=None,
):
    """TRL's GRPOTrainer with the verifier's reward functions; the reward object rides along as
    `trainer.verifier_reward` (its `summary()` goes into run.json)."""
    from trl import GRPOTrainer

    reward = VerifierReward(
        tasks, args.reward_spec(), tokenizer=tokenizer, stop_ids=set(stop_ids) | {tokenizer.pad_token_id}
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward.functions(),
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=callbacks,
    )
    trainer.verifier_reward = reward
    return trainer


def trainer_factory(tasks: dict[str, Task], stop_ids=()):
    """A callable with the trainer classes' keywords (model, args, train_dataset, eval_dataset, processing_class,
    peft_config, callbacks), so `distill train` builds the GRPO trainer at the same place as the others."""

    def make(
        *, model, args, train_dataset, processing_class, eval_dataset=None, peft_config=None, callbacks=None
    ):
        if eval_dataset is not None:
            raise DistillError("stage grpo has no eval split (score the student with distill eval)")
        return build_trainer(
            model,
            args,
            tasks,
            train_dataset,
            processing_class,
            stop_ids=stop_ids,
            peft_config=peft_config,
            callbacks=callbacks,
        )

    return make


def tasks_info(path: str, tasks: dict[str, Task]) -> dict:
    """For run.json: the tasks file a GRPO run trained on."""
    return {
        "path": path,
        "fingerprint": file_fingerprint(path),
        "n": len(tasks),
        "categories": dict(Counter(t.category for t in tasks.values())),
        "irrelevance": sum(1 for t in tasks.values() if not t.expected),
    }
