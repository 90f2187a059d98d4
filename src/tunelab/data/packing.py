"""Sequence packing for causal-LM fine-tuning: fewer padding tokens, and nothing else changes.

Several tokenised examples share one row; each example keeps its own positions (0, 1, ...) and a
block-diagonal causal attention mask keeps it from seeing its neighbours. The first label of every
example is masked, so no example learns to predict its first token from the previous example's last
one. The targets, the logits and hence the summed loss are those of the unpacked batch.

How attention is kept block-diagonal (transformers 5.23, Llama, sdpa), and why an explicit mask:

- `masking_utils.create_causal_mask` can infer packing by itself: `_preprocess_mask_arguments` calls
  `find_packed_sequence_indices(position_ids)` (a new sequence wherever positions do not step by 1)
  and `packed_sequence_compatibility_function` turns that into a block-diagonal mask. But it only
  does so when `attention_mask is None` *and* `past_key_values is None`, and `LlamaModel.forward`
  builds a `DynamicCache` whenever `use_cache` is on, which it is by default (`config.use_cache`,
  filled in by `utils.generic.merge_with_config_defaults`, in training mode too). With position_ids
  alone and the default config the model silently attends across examples; a test pins this.
- A 4-D `attention_mask` is returned as-is by `_preprocess_mask_arguments` ("already prepared, or
  custom") and handed to `torch.nn.functional.scaled_dot_product_attention` by
  `integrations.sdpa_attention.sdpa_attention_forward`. The sdpa convention is boolean with
  True = may attend (as built by `masking_utils.sdpa_mask`), not inverted; it works whatever the
  model's dtype and whatever `use_cache` says. So `collate_packed` builds that mask.
- The boolean mask is for sdpa only. `eager_attention_forward` *adds* the mask to the scores, so a
  boolean mask there is silently wrong, and flash-attention reads a mask as 2-D padding; hence
  `check_packing_supported`.

On CUDA the faster route is flash-attention's varlen kernel, which needs no mask at all: flatten
the batch into one row of shape [1, total_tokens] with restarting position_ids and no
attention_mask (transformers' `DataCollatorWithFlattening`); `_is_packed_sequence` in
`modeling_flash_attention_utils` then derives `cu_seqlens` from the position_ids (batch size 1
only). That path is documented upstream but has not been tested here (no GPU).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from tunelab.data.tokenize import IGNORE_INDEX, Example
from tunelab.errors import RecipeError

PACKING_ATTENTION = "sdpa"  # the attention implementation whose mask convention collate_packed follows


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Bins of indices into `lengths`, each bin's total at most `capacity`, in order of creation.

    Longest first (ties by index), each into the first bin with room. A segment tree over the bins'
    free space finds that bin in O(log n), so a large dataset does not cost O(n * bins).
    """
    if capacity < 1:
        raise ValueError(f"capacity must be positive, got {capacity}")
    for i, length in enumerate(lengths):
        if not 0 < length <= capacity:
            raise ValueError(
                f"example {i} has length {length}, outside 1..{capacity}; truncate it before packing"
            )
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    free = _FreeSpace(len(lengths), capacity)
    bins: list[list[int]] = []
    for i in order:
        b = free.take_first_fit(lengths[i])
        if b == len(bins):  # bins fill from the left, so the first fit is at most the first unopened bin
            bins.append([])
        bins[b].append(i)
    return bins


class _FreeSpace:
    """Free space of n bins (all start empty) in a max segment tree: leftmost bin with room, fast."""

    def __init__(self, n: int, capacity: int) -> None:
        self.size = 1
        while self.size < max(n, 1):
            self.size *= 2
        self.tree = [0] * (2 * self.size)
        for leaf in range(self.size, self.size + n):
            self.tree[leaf] = capacity
        for node in range(self.size - 1, 0, -1):
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])

    def take_first_fit(self, length: int) -> int:
        node = 1
        while node < self.size:
            node = 2 * node if self.tree[2 * node] >= length else 2 * node + 1
        self.tree[node] -= length
        bin_index = node - self.size
        node //= 2
        while node:
            self.tree[node] = max(self.tree[2 * node], self.tree[2 * node + 1])
            node //= 2
        return bin_index


def pack_examples(examples: Sequence[Example], max_len: int) -> list[Example]:
    """Rows of at most `max_len` tokens, {"input_ids", "labels", "position_ids"}, bins by first-fit decreasing."""
    for i, example in enumerate(examples):
        if len(example["input_ids"]) != len(example["labels"]):
            raise ValueError(f"example {i}: input_ids and labels differ in length")
    bins = first_fit_decreasing([len(e["input_ids"]) for e in examples], max_len)
    return [_concatenate([examples[i] for i in indices]) for indices in bins]


def _concatenate(examples: list[Example]) -> Example:
    row: Example = {"input_ids": [], "labels": [], "position_ids": []}
    for example in examples:
        row["input_ids"].extend(example["input_ids"])
        # Unpacked, an example's first token is never a target (nothing precedes it). Packed, it would
        # be predicted from the previous example's last token; masking it keeps the targets identical.
        row["labels"].extend([IGNORE_INDEX, *example["labels"][1:]])
        row["position_ids"].extend(range(len(example["input_ids"])))
    return row


def collate_packed(rows: Sequence[Example], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad packed rows to the longest; attention is causal within each example and nowhere else."""
    width = max(len(r["input_ids"]) for r in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    # Padding restarts its positions too, so it forms a segment of its own: it sees only padding,
    # and no query row of the mask is empty (an all-False row gives NaN in some sdpa kernels).
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row["input_ids"])
        input_ids[i, :n] = torch.tensor(row["input_ids"], dtype=torch.long)
        labels[i, :n] = torch.tensor(row["labels"], dtype=torch.long)
        position_ids[i, :n] = torch.tensor(row["position_ids"], dtype=torch.long)
        position_ids[i, n:] = torch.arange(width - n)
    return {
        "input_ids": input_ids,
        "labels": labels,
        "position_ids": position_ids,
        "attention_mask": block_causal_mask(position_ids),
        "_real_tokens": torch.tensor(sum(len(r["input_ids"]) for r in rows), dtype=torch.long),
    }


def block_causal_mask(position_ids: torch.Tensor) -> torch.Tensor:
    """[batch, 1, q, kv] booleans, True where query q may attend to key kv (the sdpa convention).

    A segment starts wherever a position is 0; a token attends to earlier tokens of its own segment.
    """
    segments = (position_ids == 0).cumsum(dim=-1)
    same_segment = segments[:, :, None] == segments[:, None, :]
    width = position_ids.size(-1)
    causal = torch.ones(width, width, dtype=torch.bool, device=position_ids.device).tril()
    return (same_segment & causal)[:, None, :, :]


def check_packing_supported(model: Any) -> None:
    """Refuse packed batches for attention implementations that would misread the boolean 4-D mask."""
    implementation = getattr(model.config, "_attn_implementation", None)
    if implementation != PACKING_ATTENTION:
        raise RecipeError(
            f"train.packing: needs attn_implementation={PACKING_ATTENTION!r}, the model uses {implementation!r} "
            "(eager would add the boolean mask to the scores; flash-attention would read it as padding)",
            fix="set train.packing: false for this model",
        )
