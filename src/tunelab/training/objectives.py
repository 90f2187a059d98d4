"""Objectives: small functions from (model, batch) to a *summed* loss and the number of targets.

Returning the sum, not the mean, is what lets the loop normalise by the total number of targets over
all accumulated micro-batches (and all processes), so gradient accumulation equals the full batch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from tunelab.data.tokenize import IGNORE_INDEX
from tunelab.tasks.registry import task_spec
from tunelab.training.batch import Batch, model_inputs
from tunelab.training.losses import causal_lm_loss

if TYPE_CHECKING:
    from tunelab.config import Recipe


@dataclass
class Output:
    loss_sum: torch.Tensor  # summed over targets, float32
    logits: torch.Tensor | None = None
    # Extra metrics as sums over targets (e.g. preference pairs ranked right); the loop and `evaluate`
    # add them up over micro-batches and processes and divide by the target count, like the loss.
    stats: dict[str, torch.Tensor] = field(default_factory=dict)


def count_input_tokens(batch: Batch) -> int:
    """Non-padding input tokens; packed batches carry the count, since their mask is 4-D."""
    if "_real_tokens" in batch:
        return int(batch["_real_tokens"])
    return int(batch["attention_mask"].sum())


def causal_lm(model: Any, batch: Batch) -> Output:
    """Next-token cross-entropy on the positions whose label is not IGNORE_INDEX.

    The fused loss (training/losses.py) gives the same value and gradients without materialising the
    [tokens, vocabulary] logits; it returns no logits, which nothing downstream of an sft/pretrain loss
    reads (`evaluate` reads them for classify only). Models it does not cover take the plain path.
    """
    # Both paths run the model with use_cache=False: a training forward needs no KV cache; building one
    # wastes memory (and with a cache, transformers would not honour packed position_ids on its own).
    fused = causal_lm_loss(model, batch)
    if fused is not None:
        return Output(loss_sum=fused[0])
    logits = causal_logits(model, batch)
    shifted = logits[:, :-1, :].float()
    targets = batch["labels"][:, 1:]
    loss_sum = F.cross_entropy(
        shifted.reshape(-1, shifted.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return Output(loss_sum=loss_sum, logits=logits)


def causal_logits(model: Any, batch: Batch) -> torch.Tensor:
    """Logits aligned with the input tokens. Prompt tuning (peft) puts its virtual tokens in front of
    the input, so its logits are longer than the labels by that many: the first positions are dropped."""
    logits = model(**model_inputs(batch), use_cache=False).logits
    return align_logits(logits, batch["input_ids"].size(1))


def align_logits(logits: torch.Tensor, length: int) -> torch.Tensor:
    return logits[:, -length:] if logits.size(1) > length else logits


def causal_lm_targets(batch: Batch) -> int:
    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def classification(model: Any, batch: Batch) -> Output:
    logits = model(**model_inputs(batch)).logits
    loss_sum = F.cross_entropy(logits.float(), batch["labels"], reduction="sum")
    return Output(loss_sum=loss_sum, logits=logits)


def classification_losses(
    model: Any, batch: Batch, class_weights: list[float] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(each example's cross-entropy, times its class's weight when given; the logits). The weighted
    loss and DP's per-example loss (training/privacy.py) both start here."""
    logits = model(**model_inputs(batch)).logits
    losses = F.cross_entropy(logits.float(), batch["labels"], reduction="none")
    if class_weights is not None:
        losses = losses * torch.tensor(class_weights, device=losses.device)[batch["labels"]]
    return losses, logits


def weighted_classification(weights: list[float]) -> Callable[[Any, Batch], Output]:
    """train.class_weights: each example's cross-entropy times its class's weight. The weights average 1
    over train ("balanced"), so the loss stays a sum over examples and is normalised by their count,
    as the unweighted loss is (torch's weighted mean would divide by the weights instead)."""

    def loss(model: Any, batch: Batch) -> Output:
        losses, logits = classification_losses(model, batch, weights)
        return Output(loss_sum=losses.sum(), logits=logits)

    return loss


def classification_targets(batch: Batch) -> int:
    return int(batch["labels"].numel())


def token_classification(model: Any, batch: Batch) -> Output:
    """Cross-entropy on the positions that carry a tag (each word's first sub-token); token accuracy
    over the same positions as a stat. Prompt tuning's virtual tokens come first in the logits and
    are dropped, as for causal LMs."""
    logits = align_logits(model(**model_inputs(batch)).logits, batch["input_ids"].size(1))
    labels = batch["labels"]
    loss_sum = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    scored = labels != IGNORE_INDEX
    correct = ((logits.argmax(-1) == labels) & scored).sum().float()
    return Output(loss_sum=loss_sum, logits=logits, stats={"accuracy": correct})


def token_targets(batch: Batch) -> int:
    return int((batch["labels"] != IGNORE_INDEX).sum())


def seq2seq_lm(model: Any, batch: Batch) -> Output:
    """Cross-entropy of an encoder-decoder on the target tokens, teacher-forced: the decoder reads the
    target shifted right after its start token (transformers' own `shift_tokens_right`), so logit t
    predicts label t and no shift is needed here, unlike `causal_lm`."""
    from accelerate.utils import extract_model_from_parallel
    from transformers.models.bart.modeling_bart import shift_tokens_right

    config = extract_model_from_parallel(model).config  # through DDP and peft wrappers alike
    labels = batch["labels"]
    decoder_input_ids = shift_tokens_right(labels, config.pad_token_id, config.decoder_start_token_id)
    logits = model(**model_inputs(batch), decoder_input_ids=decoder_input_ids, use_cache=False).logits
    loss_sum = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)),
        labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="sum",
    )
    return Output(loss_sum=loss_sum, logits=logits)


@dataclass(frozen=True)
class Objective:
    loss: Callable[[Any, Batch], Output]
    count_targets: Callable[[Batch], int]


# The objectives of the built-in tasks that need no settings (tunelab/tasks/ names them).
CAUSAL_LM_OBJECTIVE = Objective(loss=causal_lm, count_targets=causal_lm_targets)
CLASSIFICATION_OBJECTIVE = Objective(loss=classification, count_targets=classification_targets)
TOKEN_CLASSIFICATION_OBJECTIVE = Objective(loss=token_classification, count_targets=token_targets)
SEQ2SEQ_OBJECTIVE = Objective(loss=seq2seq_lm, count_targets=token_targets)


def weighted_classification_objective(class_weights: list[float]) -> Objective:
    """train.class_weights: each example's loss weighed by its class."""
    return Objective(loss=weighted_classification(class_weights), count_targets=classification_targets)


def collate_for(task: str) -> Callable[[list[dict[str, Any]], int], Batch]:
    """The collator of a task's examples (tasks/registry.py)."""
    return task_spec(task).collate


def build_objective(recipe: Recipe, model: Any, class_weights: list[float] | None = None) -> Objective:
    """The recipe's task's loss on `model` (its reference, for DPO and KTO, is built from it)."""
    return task_spec(recipe.task).objective(recipe, model, class_weights)
