"""The policy's view of preference rows: how likely the student being trained finds an answer, and rows whose
chosen and rejected answers share a beginning cut where they part (Step-DPO). Both render the rows as TRL's
DPOTrainer does.

    spec = PolicySpec(model="pkg:smollm2-135m-instruct", adapter="checkpoints/sft")
    policy = Policy.load(spec, with_model=True)
    nll = policy.answer_nll(rows, "rejected")       # nats: -sum log p(answer tokens | prompt), TRL's logps negated
    kept, stats = drop_far_off_policy(rows, nll, max_nll=60.0)
    text_rows, stats = to_text_rows(policy.tokenizer, kept, trim_min_share=0.5)

    # a trimmed row (text form: the student's chat template already applied)
    {"prompt": "<|im_start|>system ... <|im_start|>assistant\\n<tool_call>\\n{\\"name\\": \\"get_weather\\", ...\\"city\\": \\"",
     "chosen": "Paris\\"}}\\n</tool_call><|im_end|>", "rejected": "Lyon\\"}}\\n</tool_call><|im_end|>",
     "shared_prefix": "<tool_call>\\n{\\"name\\": \\"get_weather\\", ...\\"city\\": \\"", ...}

Why log-probabilities under the policy: a rejected answer the policy would never write (the base model's prose,
log p -193 under an SFT'd student) wins the DPO margin before training starts, and the loss then pushes the
chosen answers down with it (likelihood displacement). Such rows can be dropped (`--max-rejected-nll`).

Why text form for trimmed rows: TRL 1.16's DPOTrainer renders a conversational prompt with
`add_generation_prompt=True`, so a prompt ending in a partial assistant message is closed and a new assistant turn
opened after it (tests/test_policy.py shows it). A prompt that ends inside the assistant turn exists only as text,
which the chat template of one student renders: a trimmed dataset is for that student. Every row of such a
dataset is text (a column has one type); rows that are not trimmed render to what the conversational form would
train on. The shared prefix cancels out of plain DPO's margin (it appears in both log-ratios); it matters to the
losses that weigh chosen and rejected separately or by length (apo_zero, sigmoid_norm, ipo) and to an added SFT
term, which would otherwise also train on the shared prefix.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from data_gen.messages import clean_messages
from eval.io import DistillError


@dataclass
class PolicySpec:
    """The student whose view of the pairs counts: usually the SFT'd adapter that will be trained with DPO."""

    model: str | None = field(
        default=None,
        metadata={"help": "base model (Hub id, folder, pkg: name); default: the one the adapter's run.json or "
                  "adapter_config.json names"},
    )
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter folder (checkpoints/<run>)"})
    chat_template: str | None = field(
        default=None,
        metadata={"help": "chat template name or .jinja file; default: the adapter's saved tokenizer's, else the "
                  "model's own"},
    )
    device: str = field(default="auto", metadata={"help": "cuda, cpu, mps or auto"})
    dtype: str = field(default="float32", metadata={"help": "weights for scoring: float32, bfloat16, float16, auto"})
    batch_size: int = field(default=8, metadata={"help": "rows per forward pass when scoring"})

    def base_model(self) -> str:
        if self.model:
            return self.model
        if not self.adapter:
            raise DistillError("the policy needs --policy-model or --policy-adapter")
        from data_gen.local_models import adapter_base_model

        name = adapter_base_model(self.adapter)
        if not name:
            raise DistillError(f"{self.adapter}: neither run.json nor adapter_config.json names the base model; pass "
                               "--policy-model")
        return name


class Policy:
    """A tokenizer with the chat template the student trains with, and (for log-probabilities) its model."""

    def __init__(self, tokenizer, model=None, device: str = "cpu", batch_size: int = 8):
        self.tokenizer, self.model, self.device, self.batch_size = tokenizer, model, device, max(1, batch_size)

    @classmethod
    def load(cls, spec: PolicySpec, *, with_model: bool) -> Policy:
        """The model through the hf backend's loader (the adapter folded in where float32 allows it, the adapter's
        saved tokenizer), so scoring sees what sampling the student saw; the tokenizer alone when no model is
        needed."""
        base = spec.base_model()
        if with_model:
            from data_gen.backends.base import Sampling
            from data_gen.backends.hf_backend import HFBackend

            backend = HFBackend(base, sampling=Sampling(temperature=0.0), device=spec.device, dtype=spec.dtype,
                                chat_template=spec.chat_template, adapter=spec.adapter)
            return cls(backend.tokenizer, backend.lm, backend.device, spec.batch_size)
        from transformers import AutoTokenizer

        from data_gen.local_models import resolve_model
        from data_gen.prompting import load_chat_template

        adapter = spec.adapter
        source = adapter if adapter and (Path(adapter) / "tokenizer_config.json").is_file() else resolve_model(base)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except OSError as e:
            raise DistillError(f"cannot load the policy's tokenizer from {source!r}: {e}") from None
        load_chat_template(tokenizer, spec.chat_template)
        return cls(tokenizer)

    def answer_nll(self, rows: list[dict], side: str = "rejected", progress: bool = True) -> list[float]:
        """-sum log p(answer tokens | prompt) in nats for each row's `side` answer, tokenized as TRL's DPOTrainer
        tokenizes it (the turn's end token included): the negation of TRL's logged logps/chosen|rejected."""
        import torch
        from tqdm.auto import tqdm

        if self.model is None:
            raise DistillError("answer_nll needs the policy's model (Policy.load(..., with_model=True))")
        encoded = [answer_ids(self.tokenizer, r["prompt"], r["tools"], r[side], f"row {i}") for i, r in enumerate(rows)]
        order = sorted(range(len(rows)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out = [0.0] * len(rows)
        bar = tqdm(total=len(rows), desc=f"log p({side}) under the policy", unit="row", disable=not progress)
        for start in range(0, len(order), self.batch_size):
            batch = order[start : start + self.batch_size]
            seqs = [encoded[i][0] + encoded[i][1] for i in batch]
            width = max(map(len, seqs))
            # Left padding: every row ends at the last position, so the logits of the answers are the last ones
            # and only those are computed (logits_to_keep); positions count from each row's first real token.
            ids = torch.tensor([[pad] * (width - len(s)) + s for s in seqs], device=self.device)
            mask = torch.tensor([[0] * (width - len(s)) + [1] * len(s) for s in seqs], device=self.device)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            keep = max(len(encoded[i][1]) for i in batch) + 1
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=mask, position_ids=positions,
                                    logits_to_keep=keep).logits.float()
            logps = torch.log_softmax(logits[:, :-1], dim=-1)  # position t predicts token t + 1
            for row, i in enumerate(batch):
                n = len(encoded[i][1])
                targets = ids[row, width - n :]
                out[i] = -logps[row, keep - 1 - n :].gather(-1, targets[:, None]).sum().item()
            bar.update(len(batch))
        bar.close()
        return out


def _tools(tools) -> list | None:
    return json.loads(tools) if isinstance(tools, str) else tools


def _ids(out) -> list[int]:
    # apply_chat_template returns a list of ids, or a BatchEncoding in newer transformers.
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def common_prefix_length(a, b) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):  # the shorter one ends the prefix
        if x != y:
            break
        n += 1
    return n


def answer_ids(tokenizer, prompt: list[dict], tools, answer: list[dict], where: str) -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids) as TRL's DPOTrainer makes them: the prompt with the generation prompt, the
    conversation with the answer, and the answer where the two part."""
    tools = _tools(tools)
    prompt = clean_messages(prompt, where)
    try:
        p = _ids(tokenizer.apply_chat_template(prompt, tools=tools, tokenize=True, add_generation_prompt=True))
        full = _ids(tokenizer.apply_chat_template(prompt + clean_messages(answer, where), tools=tools, tokenize=True))
    except (ValueError, TypeError, KeyError) as e:  # no template, or one that cannot render these messages
        raise DistillError(f"{where}: the policy's chat template fails on it ({type(e).__name__}: {e}); pass "
                           "--chat-template") from None
    n = common_prefix_length(p, full)
    return full[:n], full[n:]


def drop_far_off_policy(rows: list[dict], nll: list[float], max_nll: float) -> tuple[list[dict], dict]:
    """Rows whose rejected answer's NLL under the policy is at most `max_nll` nats, each with a `rejected_nll`
    column; and what was dropped, by pair kind and rejected source."""
    if not (isinstance(max_nll, (int, float)) and math.isfinite(max_nll) and max_nll > 0):
        raise DistillError(f"--max-rejected-nll is a positive number of nats, got {max_nll!r}")
    kept, dropped = [], {}
    for row, value in zip(rows, nll, strict=True):
        row = {**row, "rejected_nll": round(value, 4)}
        if value <= max_nll:
            kept.append(row)
        else:
            key = f"{row.get('pair_kind', '-')}/{row.get('rejected_source', '-')}"
            dropped[key] = dropped.get(key, 0) + 1
    return kept, {"max_rejected_nll": max_nll, "rows_scored": len(rows), "rows_dropped": len(rows) - len(kept),
                  "dropped_by_kind_and_source": dropped, "rejected_nll": nll_summary(rows, nll)}


def nll_summary(rows: list[dict], nll: list[float]) -> dict:
    """Count, 10th/50th/90th percentile of the rejected answers' NLL per pair kind and per rejected source: what a
    threshold would cut."""

    def q(values, share):
        return round(values[min(len(values) - 1, int(share * len(values)))], 2)

    out = {}
    for column in ("pair_kind", "rejected_source"):
        groups: dict[str, list[float]] = {}
        for row, value in zip(rows, nll, strict=True):
            groups.setdefault(str(row.get(column, "-")), []).append(value)
        out[f"by_{column}"] = {
            k: {"n": len(v), "p10": q(sorted(v), 0.1), "p50": q(sorted(v), 0.5), "p90": q(sorted(v), 0.9)}
            for k, v in sorted(groups.items())
        }
    return out


def _strip_bos(tokenizer, text: str) -> str:
    """A rendered template may start with the BOS text; the text path of TRL tokenizes with special tokens, so a
    tokenizer that adds BOS itself would then see two."""
    bos = tokenizer.bos_token
    if bos and text.startswith(bos) and tokenizer("").input_ids[:1] == [tokenizer.bos_token_id]:
        return text[len(bos) :]
    return text


def _end_of_turn(tokenizer, text: str) -> str:
    """The answer up to and including the tokenizer's EOS when the turn ends with it (the template's newline after
    it dropped): TRL's text path appends EOS to an answer that does not end with it."""
    eos = tokenizer.eos_token
    if eos and eos in text:
        return text[: text.rindex(eos) + len(eos)]
    return text


def _is_call(answer: list[dict]) -> bool:
    return any(m.get("tool_calls") for m in answer)


def _cut(tokenizer, prompt: str, chosen: str, rejected: str, min_share: float) -> int | None:
    """Where in `chosen` (and `rejected`) the shared beginning ends, as a character offset, or None when the two
    share less than `min_share` of the shorter answer's tokens. The cut lies on a token boundary that the prompt
    text alone tokenizes to, so TRL's prompt ends exactly there."""
    p = tokenizer(prompt).input_ids
    c = tokenizer(prompt + chosen, return_offsets_mapping=True)
    r = tokenizer(prompt + rejected).input_ids
    start = min(common_prefix_length(p, c.input_ids), common_prefix_length(p, r))
    split = common_prefix_length(c.input_ids, r)
    shorter = min(len(c.input_ids), len(r)) - start
    if shorter <= 0 or (split - start) / shorter < min_share:
        return None
    for k in range(split, max(start, split - 4), -1):  # back off a token or two where a boundary would merge
        at = c.offset_mapping[k][0] if k < len(c.input_ids) else len(prompt + chosen)
        if at <= len(prompt) or (prompt + chosen)[:at] != (prompt + rejected)[:at]:
            return None
        if tokenizer((prompt + chosen)[:at]).input_ids == c.input_ids[:k]:
            return at - len(prompt)
    return None


def to_text_rows(tokenizer, rows: list[dict], trim_min_share: float | None) -> tuple[list[dict], dict]:
    """Rows in TRL's text preference form rendered with `tokenizer`'s chat template; with `trim_min_share`, a
    row whose chosen and rejected answers are both calls sharing at least that share of the shorter answer's
    tokens has the shared part moved into its prompt (its `shared_prefix` column; "" elsewhere)."""
    if trim_min_share is not None and not 0 < trim_min_share <= 1:
        raise DistillError(f"--trim-min-share is a share in (0, 1], got {trim_min_share!r}")
    out, trimmed = [], {}
    for i, row in enumerate(rows):
        where = f"row {i} (task {row.get('task_id')})"
        tools = _tools(row["tools"])
        prompt = clean_messages(row["prompt"], where)
        render = lambda msgs, tools=tools, **kw: tokenizer.apply_chat_template(msgs, tools=tools, tokenize=False, **kw)  # noqa: E731
        try:
            head = render(prompt, add_generation_prompt=True)
            full_c = render(prompt + clean_messages(row["chosen"], where))
            full_r = render(prompt + clean_messages(row["rejected"], where))
        except (ValueError, TypeError, KeyError) as e:
            raise DistillError(f"{where}: the policy's chat template fails on it ({type(e).__name__}: {e}); pass "
                               "--chat-template") from None
        n = min(common_prefix_length(head, full_c), common_prefix_length(head, full_r))
        text_prompt = _strip_bos(tokenizer, full_c[:n])
        chosen, rejected = _end_of_turn(tokenizer, full_c[n:]), _end_of_turn(tokenizer, full_r[n:])
        shared = ""
        if trim_min_share is not None and _is_call(row["chosen"]) and _is_call(row["rejected"]):
            cut = _cut(tokenizer, text_prompt, chosen, rejected, trim_min_share)
            if cut:
                shared, chosen, rejected = chosen[:cut], chosen[cut:], rejected[cut:]
                kind = row.get("pair_kind", "-")
                trimmed[kind] = trimmed.get(kind, 0) + 1
        out.append({**row, "prompt": text_prompt + shared, "chosen": chosen, "rejected": rejected,
                    "shared_prefix": shared})
    return out, {"trim_min_share": trim_min_share, "rows": len(rows), "rows_trimmed": sum(trimmed.values()),
                 "trimmed_by_kind": trimmed}
