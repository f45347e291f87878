"""Training recipes: one YAML file parsed with TRL's `TrlParser` into distill's script arguments, TRL's
`SFTConfig`, `DPOConfig` or `GRPOConfig` (picked by `stage`; grpo's adds the verifier reward, distill.grpo), and
TRL's `ModelConfig`.

    # recipes/qwen2.5-0.5b-instruct/dpo.yaml (excerpt)
    stage: dpo
    model_name_or_path: Qwen/Qwen2.5-0.5B-Instruct
    dataset_path: data/pairs
    init_adapter: checkpoints/qwen2.5-0.5b-instruct-sft
    load_in_4bit: true
    beta: 0.1

    recipe = parse_recipe(["recipes/qwen2.5-0.5b-instruct/dpo.yaml", "--max_steps", "10"])
    recipe.script.stage, recipe.training.beta, recipe.model.load_in_4bit   # 'dpo', 0.1, True

Unknown keys, in the file or on the command line, are errors; command-line flags override the file. Bad input
raises `DistillError` naming the file and key. Imports TRL (no weights, no datasets) so every recipe can be
checked in a test.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from data_gen.prompting import resolve_chat_template  # noqa: F401  (re-exported for recipes' users)
from eval.io import DistillError

logger = logging.getLogger(__name__)

STAGES = ("sft", "dpo", "grpo")
# The loss_type names TRL 1.16's DPOTrainer computes. TRL checks a name only when it computes the first loss, after
# the model has loaded; distill checks it while parsing the recipe (tests/test_dpo_losses.py keeps the two equal).
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
                  "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm")


def recipes_dir() -> Path:
    """The recipes shipped with distill: `recipes/` of a source checkout, else the copy an installed wheel holds
    as the package data `distill.recipes`."""
    here = Path(__file__).resolve().parent
    checkout = here.parent / "recipes"
    return checkout if (checkout / "demo").is_dir() else here / "recipes"


@dataclass
class DistillArguments:
    """distill's own recipe keys; everything else is a field of TRL's SFTConfig/DPOConfig or ModelConfig."""

    stage: str = field(
        default="sft",
        metadata={
            "help": "Training stage: 'sft' (supervised on prompt + chosen), 'dpo' (chosen vs rejected) or "
            "'grpo' (the student's own sampled answers, rewarded by the verifier; a tasks file, no pairs).",
            "choices": list(STAGES),
        },
    )
    dataset_path: str | None = field(
        default=None,
        metadata={
            "help": "Preference dataset: the folder `distill pairs --out` wrote, a folder written by "
            "`datasets.save_to_disk`, or a Hub dataset id. Columns prompt, chosen, rejected, tools. One dataset feeds both "
            "stages: SFT trains on prompt + chosen. Stage grpo: a tasks .jsonl file instead (each task with its "
            "expected calls, e.g. from `distill import bfcl`)."
        },
    )
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    dataset_test_split: str = field(
        default="test", metadata={"help": "Split to evaluate on when eval_strategy is not 'no'."}
    )
    init_adapter: str | None = field(
        default=None,
        metadata={
            "help": "LoRA adapter folder to continue from (e.g. the SFT run's checkpoints/<run>); its "
            "lora_* settings replace the recipe's. For DPO the reference is a frozen copy of this adapter."
        },
    )
    chat_template: str | None = field(
        default=None,
        metadata={
            "help": "Chat template to train with: the name of one shipped with distill (data_gen/templates) "
            "(hermes_tool, gemma3_tool) or a path to a .jinja file. Unset: the student's own template, "
            "which must pass the tool-call check. Saved with the tokenizer in the checkpoint."
        },
    )
    sft_format: str = field(
        default="completion",
        metadata={
            "help": "How SFT sees a pair: 'completion' (prompt + completion=chosen; loss on the answer "
            "only, with any chat template) or 'messages' (one conversation; set assistant_only_loss: true, "
            "which needs {%% generation %%} markers or a template TRL knows).",
            "choices": ["completion", "messages"],
        },
    )
    sft_no_call_share: float | None = field(
        # Why 0.3 and not the natural share: SFT on the pairs themselves (17% no-call targets in distill's BFCL
        # quality benchmark) took a 135M student from 100% to 6% on held-out irrelevance while it learnt to call.
        # A set share keeps the call/no-call prior independent of how many irrelevance tasks a source holds
        # (BFCL has 884 live_irrelevance tasks against 274 live_simple and live_parallel ones), and an
        # abstention is one short answer learnt in few steps: much more than a third of the rows would spend
        # steps that the call format needs. benchmarks/quality.py's dev screen is where to revisit the value.
        default=0.3,
        metadata={
            "help": "SFT: share (0-1) of the training rows whose target is an abstention (no call, on "
            "irrelevance prompts). SFT trains on one row per task and distinct chosen answer, then repeats rows of "
            "the side below its share (0 drops abstentions, 1 keeps only them). null keeps the natural share of "
            "the de-duplicated rows. Default 0.3; the composition is recorded in run.json (sft_rows)."
        },
    )
    max_truncated_share: float = field(
        default=0.01,
        metadata={
            "help": "Largest share (0-1) of pairs allowed to lose completion tokens to max_length; above "
            "it training refuses to start (TRL would truncate them silently)."
        },
    )
    audit_max_rows: int = field(
        default=5000,
        metadata={
            "help": "Rows the token-length audit tokenizes (an even spread over the split); 0 = all rows."
        },
    )
    resume: bool = field(
        default=True,
        metadata={"help": "Resume from the last checkpoint-<step> folder in output_dir when there is one."},
    )
    logps_guard_nats: float | None = field(
        default=10.0,
        metadata={
            "help": "DPO: warn when the chosen answers' summed log-probability (nats) falls more than this many "
            "nats relative to the reference model on the same batch (rewards/chosen / beta, against its first "
            "logged value): DPO pushing the good answers down with the bad ones. null turns the guard off."
        },
    )
    logps_guard_stop: bool = field(
        default=False,
        metadata={"help": "DPO: stop training when the logps/chosen guard trips (the adapter is saved as it is)."},
    )


@dataclass
class Recipe:
    path: Path
    script: DistillArguments
    training: Any  # trl.SFTConfig or trl.DPOConfig
    model: Any  # trl.ModelConfig
    overrides: list[str]


def make_parser(stage: str, prog: str = "distill train"):
    """The TrlParser for one stage: (DistillArguments, SFTConfig|DPOConfig, ModelConfig)."""
    from trl import ModelConfig, SFTConfig, TrlParser

    # FastDPOConfig is TRL's DPOConfig plus the fast path's keys (`fast: true` and its settings, all off by
    # default), so every DPO recipe parses the same with or without them.
    from distill.fast_dpo.config import FastDPOConfig

    if stage not in STAGES:
        raise DistillError(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")

    class RecipeParser(TrlParser):
        # argparse's own error() prints a usage line of several hundred TrainingArguments flags and exits;
        # a DistillError names the problem in one line and the CLI exits 2 all the same.
        def error(self, message):
            raise DistillError(message)

    if stage == "grpo":
        from distill.grpo import VerifierGRPOConfig  # TRL's GRPOConfig plus the `reward` key

        config_cls = VerifierGRPOConfig
    else:
        config_cls = SFTConfig if stage == "sft" else FastDPOConfig
    return RecipeParser((DistillArguments, config_cls, ModelConfig), prog=prog)


def read_recipe_file(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DistillError(f"{path}: no such recipe file") from None
    except UnicodeDecodeError as e:
        raise DistillError(f"{path}: not UTF-8 text (bad byte at offset {e.start}); is this a recipe?") from None
    except OSError as e:  # a folder, permission denied
        raise DistillError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise DistillError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(data, dict):
        raise DistillError(f"{path}: a recipe is a YAML mapping of keys to values")
    return data


# distill's `str | None` keys (dataset_path, init_adapter, chat_template), read off the dataclass so a new one joins
_OPTIONAL_TEXT_KEYS = tuple(k for k, t in get_type_hints(DistillArguments).items() if t == str | None)


def _flag_value(overrides: list[str], key: str) -> str | None:
    for i, arg in enumerate(overrides):
        if arg == f"--{key}" and i + 1 < len(overrides):
            return overrides[i + 1]
        if arg.startswith(f"--{key}="):
            return arg.split("=", 1)[1]
    return None


def parse_recipe(argv: list[str]) -> Recipe:
    """Parse `RECIPE.yaml [--key value ...]` into a Recipe; flags override the file."""
    if not argv or argv[0].startswith("-"):
        raise DistillError("expected a recipe file first: distill train RECIPE.yaml [--key value ...]")
    path, overrides = Path(argv[0]), list(argv[1:])
    data = read_recipe_file(path)
    stage = _flag_value(overrides, "stage") or data.get("stage")
    if stage not in STAGES:
        raise DistillError(f"{path}: key 'stage' must be one of {', '.join(STAGES)}, got {stage!r}")
    parser = make_parser(stage)

    # TrlParser also refuses unknown keys, but reports them as a list of flags; name them with the file and
    # the closest known keys, since a typo ('learning_rat') is the usual cause.
    known = {a.dest for a in parser._actions} | {"env"}
    unknown = [k for k in data if k not in known]
    if unknown:
        hints = []
        for k in unknown:
            close = difflib.get_close_matches(k, known, n=1)
            hints.append(f"'{k}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
        raise DistillError(f"{path}: unknown key(s) for stage {stage}: {', '.join(hints)}")

    # transformers 5.24 renamed gradient_checkpointing to activation_checkpointing and warns on the old name;
    # recipes keep it because 5.17 (what GPU images carry) knows only that one, and TRL's defaults set it anyway.
    warnings.filterwarnings("ignore", message=r"`(is_)?gradient_checkpointing` is deprecated")
    try:
        script, training, model = parser.parse_args_and_config(["--config", str(path), *overrides])
    except DistillError as e:
        raise DistillError(f"{path}: {e}") from None
    except (ValueError, TypeError) as e:
        # Raised by the config dataclasses' own checks (e.g. incompatible options) and by HfArgumentParser
        # for command-line flags it does not know.
        raise DistillError(f"{path}: {e}") from None

    # A float key's `--key null` parses to None (the help texts say so); a text key would keep the word as a path
    # (`--init_adapter null` would look for a folder named "null"), so null clears those keys too, as in YAML.
    for key in _OPTIONAL_TEXT_KEYS:
        if getattr(script, key) in ("null", "None") and _flag_value(overrides, key) == getattr(script, key):
            setattr(script, key, None)
    if "output_dir" not in data and _flag_value(overrides, "output_dir") is None:
        # A run without a named folder goes under checkpoints/, named after the recipe's folder and stage.
        training.output_dir = str(Path("checkpoints") / f"{path.resolve().parent.name}-{stage}")
    recipe = Recipe(path=path, script=script, training=training, model=model, overrides=overrides)
    validate(recipe)
    return recipe


def validate(recipe: Recipe) -> None:
    """Checks that no single dataclass can make: how distill's keys combine with TRL's."""
    s, t, m, where = recipe.script, recipe.training, recipe.model, recipe.path
    if not m.model_name_or_path:
        raise DistillError(f"{where}: key 'model_name_or_path' is required (a Hub id or a local folder)")
    if s.stage == "grpo":  # a tasks file, not pairs; GRPO has no max_length (distill.grpo)
        from distill.grpo import check_recipe

        check_recipe(s, t, where)
    if not s.dataset_path:
        raise DistillError(
            f"{where}: key 'dataset_path' is required (a save_to_disk folder or a Hub dataset id)"
        )
    if not m.use_peft:
        # distill trains LoRA adapters only: the DPO reference is the base with the adapter disabled.
        raise DistillError(f"{where}: key 'use_peft' must be true (distill trains LoRA adapters)")
    if not 0.0 <= s.max_truncated_share <= 1.0:
        raise DistillError(
            f"{where}: key 'max_truncated_share' is a share between 0 and 1, got {s.max_truncated_share}"
        )
    share = s.sft_no_call_share
    if share is not None and (isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 1):
        raise DistillError(
            f"{where}: key 'sft_no_call_share' is a share between 0 and 1 (null keeps the natural share), "
            f"got {share!r}"
        )
    if s.audit_max_rows < 0:
        raise DistillError(f"{where}: key 'audit_max_rows' must be >= 0 (0 = all rows)")
    if s.chat_template is not None:
        resolve_chat_template(s.chat_template)
    if s.init_adapter is not None and not (Path(s.init_adapter) / "adapter_config.json").is_file():
        # A chained DPO recipe names the SFT run's folder before it exists; train.py checks again at start.
        logger.info("init_adapter %s has no adapter_config.json yet", s.init_adapter)
    if s.stage == "sft":
        if getattr(t, "chat_template_path", None):
            raise DistillError(
                f"{where}: use distill's key 'chat_template' instead of 'chat_template_path', so "
                "the pre-flight checks see the template that trains"
            )
        if t.assistant_only_loss and s.sft_format == "completion":
            raise DistillError(
                f"{where}: assistant_only_loss needs sft_format: messages (with sft_format: "
                "completion the loss is on the answer already)"
            )
    if s.stage == "dpo":
        for name in t.loss_type:
            if name not in DPO_LOSS_TYPES:
                close = difflib.get_close_matches(str(name), DPO_LOSS_TYPES, n=1)
                raise DistillError(
                    f"{where}: key 'loss_type': unknown loss {name!r}"
                    + (f" (did you mean {close[0]!r}?)" if close else "")
                    + f"; TRL's DPO losses are {', '.join(DPO_LOSS_TYPES)}"
                )
    g = s.logps_guard_nats
    if g is not None and (isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g) or g <= 0):
        raise DistillError(
            f"{where}: key 'logps_guard_nats' is a positive number of nats (null turns the guard off), got {g!r}"
        )
    if not isinstance(s.logps_guard_stop, bool):
        raise DistillError(f"{where}: key 'logps_guard_stop' is true or false, got {s.logps_guard_stop!r}")
    if s.stage != "grpo" and not t.max_length:
        raise DistillError(
            f"{where}: key 'max_length' must be set (tokens); the audit measures pairs against it"
        )
    reports = [t.report_to] if isinstance(t.report_to, str) else list(t.report_to or [])
    if "tensorboard" in reports and importlib.util.find_spec("tensorboard") is None:
        logger.warning("report_to: tensorboard is not installed, logging to trainer_state.json only")
        t.report_to = [r for r in reports if r != "tensorboard"]
