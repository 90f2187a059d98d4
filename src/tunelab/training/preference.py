"""Preference objectives: DPO, IPO, ORPO and KTO on a causal LM, and a Bradley–Terry reward model.

Pair batches come from `data.pairs.collate_pairs`: 2B rows, chosen answers first (0..B-1), rejected
after (B..2B-1), so one forward pass scores both halves. KTO's come from `data.rated.collate_rated`:
B rated examples, then B mismatched rows for its KL estimate. As with every tunelab objective, the
loss is a *sum* over targets (pairs; KTO: examples), and the loop divides by the step's target count.

The losses are pure functions of per-pair tensors so they can be checked against hand-computed
numbers; the objectives only run the model and feed them.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from tunelab.data.rated import DESIRABLE
from tunelab.data.tokenize import IGNORE_INDEX
from tunelab.models.methods import is_adapter
from tunelab.training.objectives import Batch, Objective, Output, causal_logits, model_inputs

if TYPE_CHECKING:
    from tunelab.config import PreferenceConfig

# (model, batch) -> (summed log-probs [2B], target token counts [2B]), computed without gradients.
Reference = Callable[[Any, Batch], tuple[torch.Tensor, torch.Tensor]]

PREFERENCE_KINDS = ("dpo", "ipo", "orpo")  # the pair objectives; kto has kto_objective


# ---------------------------------------------------------------------------------------------
# Log-probabilities of the answers


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the sum of next-token log-probs over labelled positions, and how many there are."""
    shifted = logits[:, :-1, :].float()  # float32: summing hundreds of bf16 log-probs loses the margin
    targets = labels[:, 1:]
    # cross_entropy gives -log p of the target and 0 at IGNORE_INDEX, without a [2B, T, V] log-softmax copy.
    nll = F.cross_entropy(
        shifted.reshape(-1, shifted.size(-1)),
        targets.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view_as(targets)
    return -nll.sum(-1), (targets != IGNORE_INDEX).sum(-1)


def causal_logps(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    return sequence_logps(causal_logits(model, batch), batch["labels"])


def halves(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a [2B] tensor into its chosen [B] and rejected [B] halves (the collate_pairs layout)."""
    b = rows.size(0) // 2
    return rows[:b], rows[b:]


# ---------------------------------------------------------------------------------------------
# Losses: per pair, shape [B]


def dpo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DPO (Rafailov et al. 2023) on summed log-probs: -log σ(β · (chosen log-ratio − rejected log-ratio))."""
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return -F.logsigmoid(beta * margin)


def ipo_loss(
    policy_chosen: torch.Tensor,
    policy_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """IPO (Azar et al. 2023): regress the log-ratio margin to 1/(2β) instead of pushing it to infinity.

    As in TRL, the caller passes length-*averaged* log-probs: with sums the target 1/(2β) would mean
    something different for every answer length.
    """
    margin = (policy_chosen - ref_chosen) - (policy_rejected - ref_rejected)
    return (margin - 1 / (2 * beta)) ** 2


def orpo_loss(chosen_avg_logp: torch.Tensor, rejected_avg_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """ORPO (Hong et al. 2024): NLL of the chosen answer − β · log σ(log odds ratio); no reference model.

    Inputs are length-averaged log-probs. TRL averages the NLL term over all chosen tokens of the
    batch; we average it per pair instead, so the loss is a sum over pairs like every other tunelab
    objective (and gradient accumulation still equals the full batch). Pairs with answers of equal
    length give the same value either way.
    """
    log_odds = (chosen_avg_logp - rejected_avg_logp) - (
        _log1mexp(chosen_avg_logp) - _log1mexp(rejected_avg_logp)
    )
    return -chosen_avg_logp - beta * F.logsigmoid(log_odds)


def kto_loss(
    policy: torch.Tensor,
    reference: torch.Tensor,
    kl: torch.Tensor,
    desirable: torch.Tensor,
    beta: float,
    desirable_weight: float = 1.0,
    undesirable_weight: float = 1.0,
) -> torch.Tensor:
    """KTO (Ethayarajh et al. 2024, eq. 7), per example: with r = policy − reference (summed log-probs of
    the completion) and z the KL estimate (`kto_kl`), a desirable answer costs w_d · (1 − σ(β(r − z))),
    an undesirable one w_u · (1 − σ(β(z − r))). As TRL's KTOTrainer computes it (loss_type "kto")."""
    logratio = policy - reference
    return torch.where(
        desirable,
        desirable_weight * (1 - torch.sigmoid(beta * (logratio - kl))),
        undesirable_weight * (1 - torch.sigmoid(beta * (kl - logratio))),
    )


def kto_kl(policy_mismatched: torch.Tensor, reference_mismatched: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z: the mean log-ratio of mismatched prompt/completion rows, clamped at 0 (a
    KL divergence is not negative) and detached (the paper treats it as a constant; no gradient flows
    through it)."""
    return (policy_mismatched - reference_mismatched).mean().detach().clamp(min=0)


def bradley_terry_loss(chosen_scores: torch.Tensor, rejected_scores: torch.Tensor) -> torch.Tensor:
    """Reward-model loss: -log P(chosen beats rejected) = -log σ(score_chosen − score_rejected)."""
    return -F.logsigmoid(chosen_scores - rejected_scores)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, stable at both ends (Mächler 2012); TRL's log1p(−exp(x)) is exact
    only far from 0, and an answer the model already predicts well has an average log-prob near 0."""
    return torch.where(x > -0.6931471805599453, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


# ---------------------------------------------------------------------------------------------
# References: what DPO and IPO measure the policy against


def adapter_disabled_reference() -> Reference:
    """The policy's own base model: the same weights with the peft adapter switched off.

    No second copy of the weights. The forward still goes through the outer model (DDP, accelerate's
    mixed-precision wrapper), so it runs under the same precision and wrappers as the policy's.
    """

    def reference(model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        adapted = _find_adapter_model(model)
        # _restored is entered first so it exits last: peft's disable_adapter flips requires_grad on
        # the adapter weights and, on exit, makes every active adapter trainable again.
        with _restored(model), torch.no_grad(), adapted.disable_adapter():
            model.eval()  # the reference is a fixed target: no dropout noise in it
            return causal_logps(model, batch)

    return reference


def frozen_copy_reference(model: Any) -> Reference:
    """A frozen deep copy of the model as it is now, for full fine-tuning (which has no adapter)."""
    frozen = copy.deepcopy(_unwrap(model)).eval().requires_grad_(False)

    def reference(_model: Any, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        device = batch["input_ids"].device
        # The copy may be taken before the policy is moved to its device (accelerator.prepare).
        if next(frozen.parameters()).device != device:
            frozen.to(device)
        with torch.no_grad():
            return causal_logps(frozen, batch)

    return reference


def _unwrap(model: Any) -> Any:
    """Peel DDP / accelerate (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), torch.nn.Module):
            model = model._orig_mod
        else:
            return model


def _find_adapter_model(model: Any) -> Any:
    unwrapped = _unwrap(model)
    if not hasattr(unwrapped, "disable_adapter"):
        raise TypeError(
            f"adapter_disabled_reference needs a peft model, got {type(unwrapped).__name__}; "
            "use frozen_copy_reference for full fine-tuning"
        )
    return unwrapped


@contextlib.contextmanager
def _restored(model: torch.nn.Module) -> Iterator[None]:
    """Put back every module's training flag and every parameter's requires_grad on exit."""
    modes = [(m, m.training) for m in model.modules()]
    grads = [(p, p.requires_grad) for p in model.parameters()]
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training
        for param, requires_grad in grads:
            param.requires_grad_(requires_grad)


# ---------------------------------------------------------------------------------------------
# Objectives


def preference_objective(kind: str, beta: float, reference: Reference | None) -> Objective:
    """DPO / IPO (against `reference`) or ORPO (reference-free) on a causal LM; one target per pair."""
    if kind not in PREFERENCE_KINDS:
        raise ValueError(f"unknown preference objective {kind!r}; expected one of {PREFERENCE_KINDS}")
    if (reference is None) != (kind == "orpo"):
        raise ValueError(f"{kind} {'needs a reference' if reference is None else 'takes no reference'}")

    def loss(model: Any, batch: Batch) -> Output:
        if kind == "orpo":
            return _orpo(model, batch, beta)
        assert reference is not None
        # The reference runs first: its activations are gone before the policy's are kept for backward.
        ref_logps, ref_counts = reference(model, batch)
        logps, counts = causal_logps(model, batch)
        if kind == "ipo":
            logps, ref_logps = logps / counts, ref_logps / ref_counts
        pairs = (*halves(logps), *halves(ref_logps))
        losses = dpo_loss(*pairs, beta) if kind == "dpo" else ipo_loss(*pairs, beta)
        rewards = beta * (logps - ref_logps).detach()
        return Output(loss_sum=losses.sum(), stats=reward_stats(*halves(rewards)))

    return Objective(loss=loss, count_targets=count_pairs)


def kto_objective(
    beta: float, reference: Reference, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
) -> Objective:
    """KTO on rated examples; one target per example (not per row: the mismatched rows are not trained).

    Where tunelab differs from TRL's KTOTrainer:
    - The loss is summed over examples and divided by the step's example count (TRL: the mean of each
      micro-batch). The KL estimate is still per micro-batch, as in TRL, so with gradient accumulation
      KTO is not exactly its full-batch self: z comes from each micro-batch's own mismatched rows. Under
      several processes tunelab keeps each process's own z; TRL averages z over processes.
    - The mismatched rows pair prompt i with completion (i + 1) mod B of the batch actually drawn
      (data/rated.py). TRL pairs them when it maps the dataset, in chunks of the batch size, before
      shuffling, so its mismatched completions are usually from other batches.
    - Rewards are reported as sums over the examples of a step, divided by all of them (like every
      tunelab stat): `reward_desirable / desirable_share` is the mean reward of desirable answers.
    """

    def loss(model: Any, batch: Batch) -> Output:
        desirable = batch[DESIRABLE]
        b = desirable.size(0)
        rows = {k: v for k, v in batch.items() if k != DESIRABLE}
        ref_logps, _ = reference(model, rows)  # the reference first: its activations go before backward
        with torch.no_grad():  # z is a constant of the loss: its rows need no activations kept
            mismatched_logps, _ = causal_logps(model, {k: v[b:] for k, v in rows.items()})
        logps, _ = causal_logps(model, {k: v[:b] for k, v in rows.items()})
        ref_matched, ref_mismatched = halves(ref_logps)
        kl = kto_kl(mismatched_logps, ref_mismatched)
        losses = kto_loss(logps, ref_matched, kl, desirable, beta, desirable_weight, undesirable_weight)
        return Output(
            loss_sum=losses.sum(), stats=kto_stats(logps.detach(), ref_matched, kl, desirable, beta)
        )

    return Objective(loss=loss, count_targets=count_rated)


def kto_stats(
    logps: torch.Tensor, ref_logps: torch.Tensor, kl: torch.Tensor, desirable: torch.Tensor, beta: float
) -> dict[str, torch.Tensor]:
    """Sums over the examples (the loop divides by their count). `reward_accuracy`: examples on the
    right side of the reference point (a desirable answer's log-ratio above z, an undesirable one's
    below), i.e. whose loss is under half its weight."""
    logratio = logps - ref_logps
    rewards = beta * logratio
    right_side = torch.where(desirable, logratio > kl, logratio < kl)
    return {
        "kl": kl * desirable.numel(),  # each example's step carries its micro-batch's z
        "reward_accuracy": right_side.float().sum(),
        "reward_desirable": (rewards * desirable).sum(),
        "reward_undesirable": (rewards * ~desirable).sum(),
        "desirable_share": desirable.float().sum(),
    }


def count_rated(batch: Batch) -> int:
    return int(batch[DESIRABLE].numel())


def _orpo(model: Any, batch: Batch, beta: float) -> Output:
    logps, counts = causal_logps(model, batch)
    average = logps / counts
    losses = orpo_loss(*halves(average), beta)
    # TRL reports β · average log-prob as ORPO's "rewards".
    return Output(loss_sum=losses.sum(), stats=reward_stats(*halves(beta * average.detach())))


def reward_objective() -> Objective:
    """Bradley–Terry loss for a sequence-classification model with one output (the score).

    transformers scores the last non-padding token (found through config.pad_token_id), so the
    right-padded rows of collate_pairs work as they are.
    """

    def loss(model: Any, batch: Batch) -> Output:
        scores = model(**model_inputs(batch)).logits[:, 0].float()
        chosen, rejected = halves(scores)
        losses = bradley_terry_loss(chosen, rejected)
        return Output(
            loss_sum=losses.sum(), logits=scores, stats=reward_stats(chosen.detach(), rejected.detach())
        )

    return Objective(loss=loss, count_targets=count_pairs)


def count_pairs(batch: Batch) -> int:
    return int(batch["input_ids"].size(0)) // 2


def reward_stats(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, torch.Tensor]:
    """Sums over the pairs (the loop divides by the pair count); a tie does not count as ranked right."""
    return {
        "reward_accuracy": (chosen > rejected).float().sum(),
        "reward_chosen": chosen.sum(),
        "reward_rejected": rejected.sum(),
        "reward_margin": (chosen - rejected).sum(),
    }


def objective_for(preference: PreferenceConfig, model: Any) -> Objective:
    """The preference.objective's loss. DPO, IPO and KTO compare against a reference: the same model with
    its adapter switched off (no second copy), or for full/freeze a frozen copy of the weights before
    training. ORPO needs none."""
    reference = None
    if preference.objective != "orpo":
        reference = adapter_disabled_reference() if is_adapter(model) else frozen_copy_reference(model)
    if preference.objective == "kto":
        assert reference is not None
        weights = preference.desirable_weight, preference.undesirable_weight
        return kto_objective(preference.beta, reference, *weights)
    return preference_objective(preference.objective, preference.beta, reference)
