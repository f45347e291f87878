"""The on-disk reference log-prob cache: one entry per (model, reference adapter, data, max length, compute), a
hit only when all of them match, and a recomputation for anything torn or copied."""

import pytest
import torch

from distill.fast_dpo import ref_cache
from distill.fast_dpo.packing import Pair

PARTS = {"model": "m1", "adapter": "disabled", "data": "3:abc", "max_length": 1024, "compute": "no/sdpa/fused"}


class Counter:
    def __init__(self, n=3):
        self.calls, self.n = 0, n

    def __call__(self):
        self.calls += 1
        return torch.arange(self.n, dtype=torch.float32) - self.calls, torch.full((self.n,), -float(self.calls))


def test_second_lookup_is_a_hit_with_the_stored_values(tmp_path):
    compute = Counter()
    (c1, r1), hit1 = ref_cache.load_or_compute(tmp_path, PARTS, 3, compute)
    (c2, r2), hit2 = ref_cache.load_or_compute(tmp_path, PARTS, 3, compute)
    assert (hit1, hit2, compute.calls) == (False, True, 1)
    assert torch.equal(c1, c2) and torch.equal(r1, r2)


@pytest.mark.parametrize("part, value", [("model", "m2"), ("adapter", "a9f"), ("data", "3:abd"),
                                         ("max_length", 2048), ("compute", "bf16/flex/fused")])
def test_any_changed_part_misses(tmp_path, part, value):
    compute = Counter()
    ref_cache.load_or_compute(tmp_path, PARTS, 3, compute)
    _, hit = ref_cache.load_or_compute(tmp_path, {**PARTS, part: value}, 3, compute)
    assert not hit and compute.calls == 2
    _, hit = ref_cache.load_or_compute(tmp_path, PARTS, 3, compute)  # the old entry is still there
    assert hit and compute.calls == 2


def test_torn_copied_or_wrong_sized_entries_are_recomputed(tmp_path):
    compute = Counter()
    ref_cache.load_or_compute(tmp_path, PARTS, 3, compute)
    path = ref_cache.cache_path(tmp_path, PARTS)

    other = {**PARTS, "model": "m2"}
    ref_cache.cache_path(tmp_path, other).write_bytes(path.read_bytes())  # a file under another key's name
    assert ref_cache.load(tmp_path, other, 3) is None
    assert ref_cache.load(tmp_path, PARTS, 4) is None  # the data now has 4 pairs
    path.write_bytes(path.read_bytes()[:40])  # torn
    _, hit = ref_cache.load_or_compute(tmp_path, PARTS, 3, compute)
    assert not hit and compute.calls == 2


def test_data_fingerprint_sees_every_token_and_every_boundary():
    pairs = [Pair([1, 2, 3], [4], [5, 6]), Pair([7], [8, 9], [10])]
    base = ref_cache.data_fingerprint(pairs)
    assert ref_cache.data_fingerprint([Pair([1, 2, 3], [4], [5, 6]), Pair([7], [8, 9], [10])]) == base
    assert ref_cache.data_fingerprint([pairs[0], Pair([7], [8, 9], [11])]) != base
    assert ref_cache.data_fingerprint([Pair([1, 2], [3, 4], [5, 6]), pairs[1]]) != base  # same tokens, cut elsewhere
    assert ref_cache.data_fingerprint(pairs[::-1]) != base


def test_model_fingerprint_follows_the_reference_not_the_trained_adapter(tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.add_adapter("ref", model.peft_config["default"])
    base = ref_cache.reference_fingerprint(model)
    with_ref = ref_cache.reference_fingerprint(model, ref_adapter="ref")
    assert base["adapter"] == "disabled" and with_ref["adapter"] not in ("disabled", "none")
    assert with_ref["model"] == base["model"]

    def bump(fragment):
        with torch.no_grad():
            next(p for n, p in model.named_parameters() if fragment in n).add_(0.25)

    bump("lora_B.default")  # training the policy's adapter changes no reference
    assert ref_cache.reference_fingerprint(model) == base
    assert ref_cache.reference_fingerprint(model, ref_adapter="ref") == with_ref
    bump("lora_A.ref")  # another SFT adapter as reference
    assert ref_cache.reference_fingerprint(model, ref_adapter="ref")["adapter"] != with_ref["adapter"]
    bump("base_layer")  # another base model
    assert ref_cache.reference_fingerprint(model)["model"] != base["model"]


def test_model_fingerprint_includes_the_architecture(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = ref_cache.reference_fingerprint(model)
    model.config.rope_theta = 1234.0  # same weights, different log-probs
    assert ref_cache.reference_fingerprint(model) != before
