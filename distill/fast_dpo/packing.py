"""Packing preference pairs into rows: the prompt once per pair, many pairs per row, no per-sequence padding.

    pair = Pair(prompt_ids=[5, 6, 7], chosen_ids=[8, 9], rejected_ids=[10])
    layout_pair(pair)   # tokens 5 6 | 7 8 9 | 7 10, positions 0 1 | 2 3 4 | 2 3, branches 0 0 | 1 1 1 | 2 2
    packs = plan_packs([packed_length(p) for p in pairs], budget=8192)   # lists of pair indices
    batch = collate_rows([[pairs[i] for i in pack] for pack in packs[:1]], pad_id=0)

Stock DPO runs `prompt + chosen` and `prompt + rejected` as two padded rows. Here one pair is one document
`trunk + [last prompt token] + chosen + [last prompt token] + rejected`, where `trunk` is the prompt without its
last token. The rejected branch attends to the trunk and to itself, never to the chosen branch, and its
positions restart where the chosen branch's did, so every completion token sees exactly the context it has in
the stock layout. The last prompt token appears once per branch because its hidden state predicts the first
token of both completions: with one copy per branch, "token t is predicted from the hidden state at t - 1"
holds everywhere, and TRL's fused LM head (which shifts by one) scores the packed row unchanged. One token per
pair is the whole cost of that.

Attention rule (one rule for every backend, see attention.py): query q sees key k when both belong to the same
document, k <= q, and k is in the trunk (branch 0) or in q's own branch. Padding has document -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from eval.io import DistillError

IGNORE = -100  # label of a position that is not scored (TRL's and transformers' ignore index)
TRUNK, CHOSEN, REJECTED = 0, 1, 2


@dataclass(frozen=True)
class Pair:
    """One tokenized preference pair, already truncated (see truncate_pair). `index` is its row in the dataset,
    carried so that per-pair results (reference log-probs) find their way back."""

    prompt_ids: Sequence[int]
    chosen_ids: Sequence[int]
    rejected_ids: Sequence[int]
    index: int = 0


@dataclass(frozen=True)
class PairLayout:
    """The tokens of one pair in a packed row. `targets[t]` is the token scored at t (from the hidden state at
    t - 1) or IGNORE; `owner[t]` says whose completion that token belongs to: 0 chosen, 1 rejected, -1 none."""

    input_ids: list[int]
    position_ids: list[int]
    branch: list[int]
    targets: list[int]
    owner: list[int]


def truncate_pair(
    prompt_ids: Sequence[int], chosen_ids: Sequence[int], rejected_ids: Sequence[int], max_length: int | None
) -> tuple[list[int], list[int], list[int]]:
    """Cut a pair the way TRL 1.16's DataCollatorForPreference does with truncation_mode="keep_start": each of
    `prompt + chosen` and `prompt + rejected` keeps its first `max_length` tokens. Doing it once, up front, lets the
    packer know every pair's final length."""
    prompt, chosen, rejected = list(prompt_ids), list(chosen_ids), list(rejected_ids)
    if max_length is None:
        return prompt, chosen, rejected
    room = max(0, max_length - len(prompt))
    return prompt[:max_length], chosen[:room], rejected[:room]


def packed_length(pair: Pair, *, share_prompt: bool = True) -> int:
    """Tokens the pair takes in a row (layout_pair's length, without building it)."""
    p, c, r = len(pair.prompt_ids), len(pair.chosen_ids), len(pair.rejected_ids)
    return p + c + r + 1 if share_prompt else 2 * p + c + r


def logical_tokens(pair: Pair) -> int:
    """Tokens the pair stands for in stock DPO (`prompt + chosen` plus `prompt + rejected`). TRL counts these as
    `num_tokens`; throughput figures use this count for both paths so they compare work done, not work spent."""
    return 2 * len(pair.prompt_ids) + len(pair.chosen_ids) + len(pair.rejected_ids)


def layout_pair(pair: Pair, *, share_prompt: bool = True) -> PairLayout:
    """One pair as one document. With share_prompt=False (an ablation), the pair is laid out as stock DPO sees
    it, `prompt + chosen` then `prompt + rejected`, as two branches with no shared trunk."""
    prompt, chosen, rejected = list(pair.prompt_ids), list(pair.chosen_ids), list(pair.rejected_ids)
    if not prompt:
        raise DistillError(f"pair {pair.index}: empty prompt; nothing conditions the first completion token")
    p, c, r = len(prompt), len(chosen), len(rejected)
    if share_prompt:
        trunk, last = prompt[:-1], prompt[-1]
        return PairLayout(
            input_ids=trunk + [last] + chosen + [last] + rejected,
            position_ids=list(range(p - 1)) + list(range(p - 1, p + c)) + list(range(p - 1, p + r)),
            branch=[TRUNK] * (p - 1) + [CHOSEN] * (c + 1) + [REJECTED] * (r + 1),
            targets=[IGNORE] * p + chosen + [IGNORE] + rejected,
            owner=[-1] * p + [0] * c + [-1] + [1] * r,
        )
    return PairLayout(
        input_ids=prompt + chosen + prompt + rejected,
        position_ids=list(range(p + c)) + list(range(p + r)),
        branch=[CHOSEN] * (p + c) + [REJECTED] * (p + r),
        targets=[IGNORE] * p + chosen + [IGNORE] * p + rejected,
        owner=[-1] * p + [0] * c + [-1] * p + [1] * r,
    )


def plan_packs(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Group item indices into packs of at most `budget` tokens, first-fit decreasing: longest first, each into
    the first pack with room. Sorting by length is the length bucketing (long pairs share packs with short ones
    that fill the gaps); FFD leaves few tokens unused, and the plan is deterministic. Within a pack, indices are
    in ascending order so a pack's content does not depend on the sort's tie-breaking."""
    if budget < 1:
        raise DistillError(f"pack budget must be at least 1 token, got {budget}")
    too_long = [i for i, n in enumerate(lengths) if n > budget]
    if too_long:
        i = too_long[0]
        raise DistillError(
            f"{len(too_long)} pair(s) do not fit a pack of {budget} tokens (pair {i} needs {lengths[i]}); "
            "raise pack_tokens or lower max_length"
        )
    packs: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for j, free in enumerate(room):
            if lengths[i] <= free:
                packs[j].append(i)
                room[j] -= lengths[i]
                break
        else:
            packs.append([i])
            room.append(budget - lengths[i])
    return [sorted(p) for p in packs]


def collate_rows(
    rows: Sequence[Sequence[Pair]],
    *,
    pad_id: int,
    share_prompt: bool = True,
    pad_to: int | None = None,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Tensors for a batch of rows, each row holding one or more pairs. Pairs are numbered 0..K-1 in row order;
    `sequence_index[r, t]` is k for a token of pair k's chosen completion and K + k for its rejected one (-1
    elsewhere), the [chosen..., rejected...] order TRL's trainer uses. Rows are right-padded to the longest row,
    or to `pad_to` (a fixed shape lets a compiled attention kernel be reused), or up to a multiple."""
    pairs = [pair for row in rows for pair in row]
    k_total = len(pairs)
    if k_total == 0:
        raise DistillError("cannot collate an empty batch")
    built = []
    k = 0
    for row in rows:
        ids, pos, branch, targets, seq, doc = [], [], [], [], [], []
        for pair in row:
            lay = layout_pair(pair, share_prompt=share_prompt)
            ids += lay.input_ids
            pos += lay.position_ids
            branch += lay.branch
            targets += lay.targets
            seq += [-1 if o < 0 else k + o * k_total for o in lay.owner]
            doc += [k] * len(lay.input_ids)
            k += 1
        built.append((ids, pos, branch, targets, seq, doc))

    width = max(len(b[0]) for b in built)
    if pad_to is not None:
        if width > pad_to:
            raise DistillError(f"a row of {width} tokens does not fit the fixed width {pad_to}")
        width = pad_to
    elif pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of

    def padded(values: list[int], fill: int) -> list[int]:
        return values + [fill] * (width - len(values))

    out = {
        "input_ids": [padded(b[0], pad_id) for b in built],
        "position_ids": [padded(b[1], 0) for b in built],
        "branch": [padded(b[2], TRUNK) for b in built],
        "completion_labels": [padded(b[3], IGNORE) for b in built],
        "sequence_index": [padded(b[4], -1) for b in built],
        "doc_ids": [padded(b[5], -1) for b in built],
    }
    batch = {name: torch.tensor(values, dtype=torch.long) for name, values in out.items()}
    batch["pair_index"] = torch.tensor([p.index for p in pairs], dtype=torch.long)
    batch["logical_tokens"] = torch.tensor(sum(logical_tokens(p) for p in pairs), dtype=torch.long)
    return batch
