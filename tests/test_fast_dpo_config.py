"""distill.fast_dpo.config: the fast DPO settings without torch, and FastDPOConfig as TRL's DPOConfig plus them."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from eval.io import DistillError

ROOT = Path(__file__).resolve().parents[1]


def test_importing_the_config_module_and_the_package_loads_no_torch_or_trl():
    code = (
        "import sys\n"
        "import distill.fast_dpo.config as config, distill.fast_dpo as fast_dpo\n"
        "assert config.FAST_DPO_FIELDS[0] == 'fast' and 'sigmoid' in fast_dpo.SUPPORTED_LOSS_TYPES\n"
        "heavy = sorted(m for m in ('torch', 'trl', 'transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


def test_fast_dpo_config_is_trl_dpo_config_plus_the_fast_fields(tmp_path):
    from trl import DPOConfig

    from distill.fast_dpo import FastDPOConfig
    from distill.fast_dpo.config import FAST_DPO_FIELDS
    from distill.fast_dpo.config import FastDPOConfig as same

    assert FastDPOConfig is same and issubclass(FastDPOConfig, DPOConfig)
    args = FastDPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, fast=True, pack_tokens=4096)
    assert (args.fast, args.pack_tokens, args.lm_head, args.loss_type) == (True, 4096, "auto", ["sigmoid"])
    names = [f.name for f in FastDPOConfig.__dataclass_fields__.values()]
    assert tuple(names[-len(FAST_DPO_FIELDS):]) == FAST_DPO_FIELDS  # after DPOConfig's own fields
    # the Trainer pickles its arguments into training_args.bin
    again = pickle.loads(pickle.dumps(args))
    assert type(again) is FastDPOConfig and again.pack_tokens == 4096


@pytest.mark.parametrize(
    "bad, named",
    [
        (dict(lm_head="dense"), "lm_head"),
        (dict(attention_backend="flash"), "attention_backend"),
        (dict(pack_tokens=1), "pack_tokens"),
        (dict(loss_type=["aot"]), "loss_type"),
        (dict(use_weighting=True), "use_weighting"),
        (dict(precompute_ref_log_probs=True, cache_ref_logps=False), "cache_ref_logps"),
    ],
)
def test_a_fast_config_with_an_unsupported_setting_fails_when_built(tmp_path, bad, named):
    from distill.fast_dpo import FastDPOConfig

    with pytest.raises(DistillError, match=named):
        FastDPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, fast=True, **bad)
    # with fast off the stock trainer runs, and these are its settings to judge
    if named not in ("lm_head", "attention_backend", "pack_tokens", "cache_ref_logps"):
        FastDPOConfig(output_dir=str(tmp_path), use_cpu=True, bf16=False, fast=False, **bad)
