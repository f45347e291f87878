"""FastDPOTrainer: TRL's DPOTrainer with the prompt computed once per pair, pairs packed without padding, the
reference log-probs cached on disk, and the LM head run only on completion tokens. Same loss.

    from distill.fast_dpo import FastDPOConfig, FastDPOTrainer
    args = FastDPOConfig(output_dir="out", beta=0.1, pack_tokens=8192, max_length=2048)
    trainer = FastDPOTrainer(model, args=args, train_dataset=ds, processing_class=tok, peft_config=lora)
    trainer.train()

A subclass of DPOTrainer rather than of transformers' Trainer: TRL's constructor already does everything that
must match the stock path exactly (tokenising the preference data with tools and chat templates, finding where
the completion starts, dropping over-long prompts, PEFT and QLoRA set-up, the reference adapter of an SFT
checkpoint, the fused LM head, metrics logging, model cards). This class replaces only what makes stock DPO slow:
the data loader (packs instead of padded batches), the loss computation (one packed forward; reference
log-probs from the cache) and the reference precompute.

Differences from the stock trainer, all deliberate:
- A step's batch is one pack of `pack_tokens` tokens holding however many pairs fit (about 14 for prompts of
  450 and completions of 70 at 8192), not `per_device_train_batch_size` pairs. The loss is the mean over the
  pairs of the pack, as TRL's is over the pairs of its batch. With flex attention (CUDA) or per-document SDPA
  (the CPU default) a pack is one row; with the dense-mask SDPA ablation, whose mask costs the square of the row,
  it is laid out as rows no longer than its longest pair. Peak memory grows with pack_tokens: on the CPU it is
  about the activations of pack_tokens tokens, so pick it near what a stock batch holds (docs/fast-dpo.md).
- Packs are fixed once (first-fit decreasing over lengths); each epoch visits them in a new random order.
- Supported: loss types in losses.SUPPORTED_LOSS_TYPES with loss_weights, beta, label_smoothing; PEFT (fresh
  adapter, or an SFT adapter with TRL's "ref" copy), a separate ref_model, full fine-tuning. Refused with a
  DistillError: ld_alpha, use_weighting, f-divergences, sync_ref_model, vision data, MoE aux loss.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import is_peft_model
from torch.utils.data import DataLoader, Sampler
from trl import DPOConfig, DPOTrainer

from eval.io import DistillError

from . import ref_cache, trl_compat
from .attention import attention_mask, resolve_backend, use_backend
from .config import FastDPOConfig, check_fast_settings
from .logps import ensure_fused_lm_head, sequence_logps
from .losses import preference_loss
from .packing import Pair, collate_rows, packed_length, plan_packs, truncate_pair

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    root = os.environ.get("DISTILL_CACHE") or Path.home() / ".cache" / "distill"
    return Path(root) / "ref_logps"


@dataclass
class PairStore:
    """The pairs of one dataset, truncated, with their reference log-probs once known."""

    pairs: list[Pair]
    ref_chosen: torch.Tensor | None = None
    ref_rejected: torch.Tensor | None = None


def pairs_from_dataset(dataset, max_length: int | None) -> list[Pair]:
    """Pairs from a dataset TRL has tokenized (prompt_ids, chosen_ids, rejected_ids columns)."""
    missing = {"prompt_ids", "chosen_ids", "rejected_ids"} - set(dataset.column_names)
    if missing:
        raise DistillError(f"dataset lacks the tokenized columns {sorted(missing)}")
    columns = dataset.select_columns(["prompt_ids", "chosen_ids", "rejected_ids"]).to_dict()
    return [
        Pair(*truncate_pair(p, c, r, max_length), index=i)
        for i, (p, c, r) in enumerate(zip(columns["prompt_ids"], columns["chosen_ids"], columns["rejected_ids"], strict=True))
    ]


class PairBatchSampler(Sampler):
    """Batches of pair indices. With packing: the fixed packs, in a new random order each epoch. Without: a new
    random permutation each epoch, cut into batches of `batch_size` (what Trainer's random sampler does)."""

    def __init__(self, lengths: list[int], *, packing: bool, budget: int, batch_size: int, shuffle: bool, seed: int):
        self.packs = plan_packs(lengths, budget) if packing else None
        self.n, self.batch_size, self.shuffle, self.seed = len(lengths), batch_size, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, n: int) -> list[int]:
        if not self.shuffle:
            return list(range(n))
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(n, generator=g).tolist()

    def __iter__(self):
        if self.packs is not None:
            batches = [self.packs[i] for i in self._order(len(self.packs))]
        else:
            order = self._order(self.n)
            batches = [order[i : i + self.batch_size] for i in range(0, self.n, self.batch_size)]
        # Trainer calls set_epoch before each epoch on recent transformers; counting here keeps epochs apart on
        # versions that do not reach a batch sampler
        self.epoch += 1
        yield from batches

    def __len__(self) -> int:
        return len(self.packs) if self.packs is not None else -(-self.n // self.batch_size)


@dataclass
class PackedCollator:
    """Pairs (one batch from PairBatchSampler) to the tensors of collate_rows, plus cached reference log-probs.
    With split_rows the pairs are regrouped into rows, so the batch order differs from the input order:
    `pair_index` says which pair each position of the per-pair tensors is."""

    store: PairStore
    pad_id: int
    packing: bool
    share_prompt: bool
    pad_to: int | None = None
    pad_to_multiple_of: int | None = None
    split_rows: bool = False  # lay a pack out as rows no longer than its longest pair (dense attention)

    def __call__(self, pairs: list[Pair]) -> dict[str, torch.Tensor]:
        if not self.packing:
            rows = [[p] for p in pairs]
        elif not self.split_rows:
            rows = [pairs]
        else:
            # Rows of at most the longest pair: each pair's T^2 block is computed at most about twice over
            lengths = [packed_length(p, share_prompt=self.share_prompt) for p in pairs]
            rows = [[pairs[i] for i in row] for row in plan_packs(lengths, max(lengths))]
        batch = collate_rows(
            rows,
            pad_id=self.pad_id,
            share_prompt=self.share_prompt,
            pad_to=self.pad_to,
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        if self.store.ref_chosen is not None:
            batch["ref_chosen_logps"] = self.store.ref_chosen[batch["pair_index"]]
            batch["ref_rejected_logps"] = self.store.ref_rejected[batch["pair_index"]]
        return batch


def check_args(args: DPOConfig) -> None:
    if not isinstance(args, FastDPOConfig):
        raise DistillError(f"FastDPOTrainer takes a FastDPOConfig, got {type(args).__name__}")
    check_fast_settings(args)


@trl_compat.skip_trl_precompute  # the reference log-probs come from the packed cache (_fill_reference)
class FastDPOTrainer(DPOTrainer):
    def __init__(self, model, ref_model=None, args: FastDPOConfig | None = None, *a, **kw):
        args = args if args is not None else FastDPOConfig(output_dir="fast-dpo")
        check_args(args)
        trl_compat.check_trl()
        self._cache_ref = args.cache_ref_logps or args.precompute_ref_log_probs
        super().__init__(model, ref_model, args, *a, **kw)
        trl_compat.check_trainer(self)
        if trl_compat.is_vision_dataset(self):
            raise DistillError("fast DPO handles text preference data only")
        if trl_compat.uses_aux_loss(self):
            raise DistillError("fast DPO does not add the MoE load-balancing loss; set router_aux_loss_coef=0")

        self._backend = resolve_backend(args.attention_backend, self.accelerator.device)
        self._lm_head = self._resolve_lm_head(args.lm_head)
        for m in (self.model, self.ref_model):
            if m is not None:
                use_backend(m, self._backend)
                ensure_fused_lm_head(m)
        self._stores: dict[str, PairStore] = {"train": PairStore(pairs_from_dataset(self.train_dataset, args.max_length))}
        if isinstance(self.eval_dataset, dict):
            for name, ds in self.eval_dataset.items():
                self._stores[name] = PairStore(pairs_from_dataset(ds, args.max_length))
        elif self.eval_dataset is not None:
            self._stores["eval"] = PairStore(pairs_from_dataset(self.eval_dataset, args.max_length))
        if args.packing:
            pairs = self._stores["train"].pairs
            n_packs = len(plan_packs([packed_length(p, share_prompt=args.share_prompt) for p in pairs], args.pack_tokens))
            logger.info("fast DPO: %d pairs in %d packs of %d tokens (%.1f pairs per step and device; "
                        "per_device_train_batch_size is not used)", len(pairs), n_packs, args.pack_tokens,
                        len(pairs) / n_packs)
        self.ref_cache_hits: dict[str, bool] = {}
        self.ref_seconds = 0.0  # fingerprinting plus the reference pass (or the cache read), for benchmarks
        if self._cache_ref:
            for name, store in self._stores.items():
                self._fill_reference(name, store)

    def _resolve_lm_head(self, requested: str) -> str:
        """'auto': TRL's fused head on CUDA (it projects only the scored positions there), the model's own head on
        the scored positions elsewhere. Prompt-learning adapters prepend positions the scored ones would have to
        be shifted by, so they keep the fused head."""
        peft_configs = getattr(self.accelerator.unwrap_model(self.model), "peft_config", None) or {}
        prompt_learning = any(getattr(c, "is_prompt_learning", False) for c in peft_configs.values())
        if requested == "auto":
            return "fused" if self.accelerator.device.type == "cuda" or prompt_learning else "selected"
        if requested == "selected" and prompt_learning:
            raise DistillError("lm_head 'selected' does not support prompt-learning adapters; use 'fused'")
        return requested

    # ---- reference log-probs -------------------------------------------------------------------------------

    def _ref_adapter(self) -> str | None:
        """TRL's convention: a PEFT model that came with an adapter gets a frozen "ref" copy of it."""
        peft_config = getattr(self.accelerator.unwrap_model(self.model), "peft_config", None) or {}
        return "ref" if "ref" in peft_config else None

    @contextlib.contextmanager
    def _reference(self):
        """Yield the module whose forward is the reference: ref_model, or the policy with its adapter disabled
        (or switched to "ref"), or, for full fine-tuning without a ref_model, the policy itself (valid before
        training only, which is when the cache is filled)."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        no_checkpointing = trl_compat.disable_gradient_checkpointing(
            self.model, self.args.gradient_checkpointing_kwargs
        )
        with torch.no_grad(), no_checkpointing:
            if self.ref_model is not None:
                yield self.ref_model
            elif is_peft_model(unwrapped):
                with trl_compat.use_adapter(unwrapped, self._ref_adapter()):
                    yield self.model
            else:
                yield self.model

    def _mask(self, batch):
        return attention_mask(batch["doc_ids"], batch["branch"], self._backend)

    def _reference_batch_logps(self, batch, mask):
        with self._reference() as ref:
            return sequence_logps(ref, batch, mask, lm_head=self._lm_head).logps.chunk(2)

    def compute_reference_logps(self, pairs: list[Pair]) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs of every pair, in packs of pack_tokens (forward only, so packing is always on)."""
        lengths = [packed_length(p, share_prompt=self.args.share_prompt) for p in pairs]
        collate = self._collator(PairStore(pairs), packing=True)
        chosen, rejected = torch.zeros(len(pairs)), torch.zeros(len(pairs))
        device = self.accelerator.device
        for pack in plan_packs(lengths, self.args.pack_tokens):
            batch = {k: v.to(device) for k, v in collate([pairs[i] for i in pack]).items()}
            with self.accelerator.autocast():
                c, r = self._reference_batch_logps(batch, self._mask(batch))
            chosen[batch["pair_index"].cpu()] = c.float().cpu()
            rejected[batch["pair_index"].cpu()] = r.float().cpu()
        return chosen, rejected

    def reference_cache_parts(self, pairs: list[Pair]) -> dict:
        """What the cached reference log-probs depend on; any change selects another cache entry."""
        fingerprint = ref_cache.reference_fingerprint(
            self.accelerator.unwrap_model(self.model),
            ref_model=self.ref_model,
            ref_adapter=self._ref_adapter() if self.ref_model is None else None,
        )
        return {
            **fingerprint,
            "data": ref_cache.data_fingerprint(pairs),
            "max_length": self.args.max_length,
            "compute": f"{self.accelerator.mixed_precision}/{self._backend}/{self._lm_head}",
        }

    def _fill_reference(self, name: str, store: PairStore) -> None:
        started = time.perf_counter()
        cache_dir = self.args.ref_cache_dir or default_cache_dir()
        parts = self.reference_cache_parts(store.pairs)
        # The first process on each machine computes and writes; the others then find the entry
        with self.accelerator.local_main_process_first():
            (chosen, rejected), hit = ref_cache.load_or_compute(
                cache_dir, parts, len(store.pairs), lambda: self.compute_reference_logps(store.pairs)
            )
        store.ref_chosen, store.ref_rejected = chosen, rejected
        self.ref_cache_hits[name] = hit
        self.ref_seconds += time.perf_counter() - started

    # ---- data ----------------------------------------------------------------------------------------------

    def _collator(self, store: PairStore, *, packing: bool) -> PackedCollator:
        # Flex attention skips masked-out blocks, so one row of pack_tokens costs what its documents cost, and
        # it is compiled for a shape: a fixed width compiles once (without packing: the longest pair's width, as
        # a width per batch would recompile). The docs backend attends per document, so a pack is one row with
        # no padding at all. A dense mask makes attention cost the square of the row, so with SDPA a pack is laid
        # out as several shorter rows (same pairs, same loss).
        flex = self._backend == "flex"
        pad_to = None
        if flex:
            longest = max(packed_length(p, share_prompt=self.args.share_prompt) for p in store.pairs)
            pad_to = self.args.pack_tokens if packing else -(-longest // 128) * 128
        return PackedCollator(
            store=store,
            pad_id=self._pad_token_id(),
            packing=packing,
            share_prompt=self.args.share_prompt,
            pad_to=pad_to,
            split_rows=self._backend == "sdpa",
        )

    def _pad_token_id(self) -> int:
        # DPOTrainer has set the pad token on the tokenizer (or on a processor's tokenizer) by now
        return getattr(self.processing_class, "tokenizer", self.processing_class).pad_token_id

    def _dataloader(self, store: PairStore, *, shuffle: bool, batch_size: int) -> DataLoader:
        lengths = [packed_length(p, share_prompt=self.args.share_prompt) for p in store.pairs]
        sampler = PairBatchSampler(
            lengths,
            packing=self.args.packing,
            budget=self.args.pack_tokens,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=self.args.data_seed if self.args.data_seed is not None else self.args.seed,
        )
        loader = DataLoader(
            store.pairs,
            batch_sampler=sampler,
            collate_fn=self._collator(store, packing=self.args.packing),
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        return self.accelerator.prepare(loader)

    def get_train_dataloader(self) -> DataLoader:
        return self._dataloader(self._stores["train"], shuffle=True, batch_size=trl_compat.train_batch_size(self))

    def get_eval_dataloader(self, eval_dataset=None) -> DataLoader:
        if isinstance(eval_dataset, str):
            store = self._stores[eval_dataset]
        elif eval_dataset is not None:
            # A dataset handed to evaluate(): TRL has tokenized it; its reference log-probs come per batch
            store = PairStore(pairs_from_dataset(eval_dataset, self.args.max_length))
        else:
            store = self._stores["eval"]
        return self._dataloader(store, shuffle=False, batch_size=self.args.per_device_eval_batch_size)

    # ---- loss ----------------------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        mask = self._mask(inputs)
        policy = sequence_logps(model, inputs, mask, lm_head=self._lm_head)
        chosen_logps, rejected_logps = policy.logps.chunk(2)
        if "ref_chosen_logps" in inputs:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = self._reference_batch_logps(inputs, mask)
        chosen_counts, rejected_counts = policy.counts.chunk(2)
        loss, chosen_rewards, rejected_rewards = preference_loss(
            chosen_logps,
            rejected_logps,
            ref_chosen.to(chosen_logps.dtype),
            ref_rejected.to(rejected_logps.dtype),
            chosen_counts,
            rejected_counts,
            loss_types=self.args.loss_type,
            loss_weights=self.args.loss_weights,
            beta=self.args.beta,
            label_smoothing=self.args.label_smoothing,
        )
        self._record_metrics(mode, inputs, policy, chosen_logps, rejected_logps, chosen_rewards, rejected_rewards)
        return (loss, None) if return_outputs else loss

    def _record_metrics(self, mode, inputs, policy, chosen_logps, rejected_logps, chosen_rewards, rejected_rewards):
        """The metrics TRL's DPOTrainer logs, under the same names, gathered across processes the same way."""
        gather = self.accelerator.gather_for_metrics
        metrics = trl_compat.metrics(self, mode)
        if mode == "train":
            trl_compat.add_train_tokens(self, gather(inputs["logical_tokens"].reshape(1)).sum().item())
        metrics["num_tokens"] = [trl_compat.train_tokens(self)]
        chosen_counts = policy.counts.chunk(2)[0]
        if policy.entropy_sum is not None:
            metrics["entropy"].append((gather(policy.entropy_sum.reshape(1)).sum() / gather(
                policy.counts.sum().reshape(1)).sum().clamp(min=1)).item())
        if policy.top1_sum is not None:
            metrics["mean_token_accuracy"].append((gather(policy.top1_sum.reshape(1)).sum() / gather(
                chosen_counts.sum().reshape(1)).sum().clamp(min=1)).item())
        chosen_rewards, rejected_rewards = gather(chosen_rewards), gather(rejected_rewards)
        metrics["rewards/chosen"].append(chosen_rewards.mean().item())
        metrics["rewards/rejected"].append(rejected_rewards.mean().item())
        metrics["rewards/accuracies"].append((chosen_rewards > rejected_rewards).float().mean().item())
        metrics["rewards/margins"].append((chosen_rewards - rejected_rewards).mean().item())
        metrics["logps/chosen"].append(gather(chosen_logps.detach()).mean().item())
        metrics["logps/rejected"].append(gather(rejected_logps.detach()).mean().item())

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Packed rows have no per-sequence logits to return; evaluation reports the loss and the metrics
        inputs = trl_compat.prepare_inputs(self, inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None
