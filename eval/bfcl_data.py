"""Where the Berkeley Function Calling Leaderboard data lives: the installed `bfcl-eval` package, found without
importing it (its import pulls every vendor SDK).

    bfcl_data_dir() / "BFCL_v4_simple_python.json"                  # questions and tools
    bfcl_data_dir() / "possible_answer" / "BFCL_v4_simple_python.json"  # answers
    bfcl_version()                                                    # "2026.3.23"

In eval/ because both the importer (data_gen/bfcl.py) and the reference checker (eval/bfcl_reference.py) read it,
and eval/ is the layer every other may import.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from pathlib import Path

from eval.io import DistillError


def bfcl_data_dir() -> Path:
    """The `data/` folder of the installed bfcl-eval package."""
    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise DistillError(
            "the bfcl-eval package is not installed; install its data with `pip install --no-deps bfcl-eval` "
            "(--no-deps: its own requirements pin numpy 1.26 and pull a dozen vendor SDKs)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def bfcl_version() -> str:
    try:
        return importlib.metadata.version("bfcl-eval")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
