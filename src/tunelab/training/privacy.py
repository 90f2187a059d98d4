"""Differential privacy (`train.privacy`): DP-SGD through Opacus.

Opacus does the privacy: per-example gradients (its hooks; functorch for a trainable layer it has no
sampler for, such as transformers' RMSNorm classes), clipping, Gaussian noise and the accountant. What
tunelab adds is how that meets its own loop, so that DP runs keep exact resume and the loop's logs:

- Sampling. DP-SGD's accounting assumes each example joins each step independently with probability
  q (Poisson sampling), so `PoissonBatches` replaces the seeded permutation of `MicroBatches`. It
  draws each step with Opacus' own `UniformWithReplacementSampler`, from a generator seeded by (seed,
  step), so a resumed run draws what the uninterrupted one would have. q is Opacus' 1 / ceil(N / B),
  B = batch_size x grad_accum (the expected logical batch).
- Accumulation. A drawn batch is cut into micro-batches of at most batch_size, as Opacus'
  BatchMemoryManager cuts it: each micro-batch's per-example gradients are clipped and added up by the
  DPOptimizer (a skipped step), and the last one adds the noise and steps. The loss is each example's
  own mean (over its target tokens for sft), so the unit of privacy is the example; the loop's
  token-count normalisation does not apply.
- Noise. The noise generator is reseeded from (seed, step) too. Like Opacus outside secure_mode,
  this is not a cryptographic source: it makes a run reproducible, not hardened.
- Accounting. The noise multiplier is calibrated by Opacus for the steps the run will take (not for
  epochs, which train.max_steps can cut short), and the epsilon spent is recomputed from the
  accountant's history, which is saved in each checkpoint.
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from tunelab.data.tokenize import IGNORE_INDEX, Example
from tunelab.errors import TunelabError
from tunelab.tasks.registry import task_spec
from tunelab.training.loop import StepResult
from tunelab.training.objectives import Batch, causal_logits, classification_losses, count_input_tokens

if TYPE_CHECKING:
    from collections.abc import Callable

    from tunelab.config import PrivacyConfig, TrainConfig
    from tunelab.training.loop import TrainState
    from tunelab.training.objectives import Objective

WEIGHT = "_dp_weight"  # 0 for the stand-in row of an empty draw (model_inputs drops `_` keys)


def step_seed(seed: int, step: int) -> int:
    """One seed per (run seed, step): the step's draw and its noise come from it."""
    return (seed * 1_000_003 + step) % (2**63)


class PoissonBatches:
    """Each step's examples, Poisson-sampled and cut into micro-batches (the MicroBatches interface)."""

    def __init__(
        self,
        examples: list[Example],
        cfg: TrainConfig,
        pad_token_id: int,
        collate_fn: Callable[[list[Example], int], Batch],
        position_ids: bool,
    ):
        """`position_ids`: give each row its own positions. BERT-like models broadcast one (1, L) row of
        positions over the batch, and a per-example gradient of the position embedding needs (B, L)."""
        self.examples, self.cfg = examples, cfg
        self.pad_token_id, self.collate_fn, self.position_ids = pad_token_id, collate_fn, position_ids
        self.steps_per_epoch = math.ceil(len(examples) / (cfg.batch_size * cfg.grad_accum))
        self.sample_rate = 1 / self.steps_per_epoch  # Opacus' rate: 1 / len(its data loader)
        self.noise: torch.Generator | None = None  # set by make_private: reseeded each step

    @property
    def per_epoch(self) -> int:
        """Micro-batches per epoch as `total_steps` counts them: grad_accum for each expected step."""
        return self.steps_per_epoch * self.cfg.grad_accum

    def draw(self, step: int) -> list[int]:
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        generator = torch.Generator().manual_seed(step_seed(self.cfg.seed, step))
        sampler = UniformWithReplacementSampler(
            num_samples=len(self.examples), sample_rate=self.sample_rate, generator=generator, steps=1
        )
        return list(next(iter(sampler)))

    def next_step(self, state: TrainState) -> list[Batch]:
        indices = self.draw(state.step)
        if self.noise is not None:
            self.noise.manual_seed(step_seed(self.cfg.seed, state.step) ^ 0x5EED)
        state.batch_in_epoch += self.cfg.grad_accum
        if state.batch_in_epoch >= self.per_epoch:
            state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        if not indices:  # still a step: the accountant counts it and the noise is added to zero
            return [self.collate([self.examples[0]], weight=0.0)]
        chunks = np.array_split(indices, math.ceil(len(indices) / self.cfg.batch_size))
        return [self.collate([self.examples[i] for i in chunk]) for chunk in chunks]

    def collate(self, examples: list[Example], weight: float = 1.0) -> Batch:
        batch = self.collate_fn(examples, self.pad_token_id)
        if self.position_ids:
            rows, width = batch["input_ids"].shape
            batch["position_ids"] = torch.arange(width).expand(rows, width).clone()
        batch[WEIGHT] = torch.full((len(examples),), weight)
        return batch

    def take_mix(self) -> dict[str, float]:
        return {}


def per_example_loss(task: str, class_weights: list[float] | None) -> Callable[[Any, Batch], torch.Tensor]:
    """Each example's own loss, shape (B,): the unit DP clips."""
    if task_spec(task).head.labels_examples:  # one label per example: its cross-entropy
        return functools.partial(_classification_losses, class_weights=class_weights)
    return _causal_losses  # a causal LM (the tasks DP supports: tasks/registry.py `private`)


def _classification_losses(model: Any, batch: Batch, class_weights: list[float] | None) -> torch.Tensor:
    return classification_losses(model, batch, class_weights)[0]


def _causal_losses(model: Any, batch: Batch) -> torch.Tensor:
    logits = causal_logits(model, batch)[:, :-1, :].float()
    targets = batch["labels"][:, 1:]
    token_losses = F.cross_entropy(
        logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX, reduction="none"
    )  # (B, L-1), 0 where ignored
    counts = (targets != IGNORE_INDEX).sum(dim=1).clamp(min=1)
    return token_losses.sum(dim=1) / counts


@dataclass
class Privacy:
    """The run's DP state: Opacus' engine (its accountant), the DP optimizer and the budget."""

    engine: Any  # opacus.PrivacyEngine
    optimizer: Any  # opacus.optimizers.DPOptimizer (accelerate wraps it for the loop)
    hooks: Any  # Opacus' per-example gradient hooks on the model
    loss: Callable[[Any, Batch], torch.Tensor]
    config: PrivacyConfig
    delta: float
    noise_multiplier: float
    sample_rate: float
    expected_batch: int
    clipping: str = "per-example"  # or "ghost": per-example norms without per-example gradients

    def epsilon(self) -> float:
        """The epsilon spent so far, from the accountant's history (0 before the first step)."""
        if not self.engine.accountant.history:
            return 0.0
        return float(self.engine.accountant.get_epsilon(delta=self.delta))

    def describe(self) -> dict[str, Any]:
        return {
            "target_epsilon": self.config.target_epsilon,
            "epsilon": self.epsilon(),
            "delta": self.delta,
            "accountant": self.config.accountant,
            "noise_multiplier": self.noise_multiplier,
            "max_grad_norm": self.config.max_grad_norm,
            "sample_rate": self.sample_rate,
            "expected_batch": self.expected_batch,
            "clipping": self.clipping,
        }

    def spent_line(self) -> str:
        return (
            f"privacy: epsilon {self.epsilon():.3f} spent of {self.config.target_epsilon} (delta "
            f"{self.delta:.2e}, noise multiplier {self.noise_multiplier:.3f}, {self.config.accountant} accountant)"
        )

    # Checkpointed (accelerator.register_for_checkpointing): the accountant's (noise, rate, steps) history.
    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(entry) for entry in self.engine.accountant.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.engine.accountant.history = [tuple(entry) for entry in state["history"]]

    def backward(self, losses: torch.Tensor, accelerator: Any) -> None:
        """Per-example clipping: Opacus' hooks keep each example's gradient. Ghost clipping: a first
        backward gives each example's gradient norm alone, a second the clipped sum (Opacus'
        DPTensorFastGradientClipping), so memory does not grow with the batch."""
        if self.clipping == "ghost":
            from opacus.utils.fast_gradient_clipping_utils import DPTensorFastGradientClipping

            DPTensorFastGradientClipping(self.hooks, self.optimizer, losses, "mean").backward()
        else:
            accelerator.backward(losses.mean())

    def accumulate(
        self, model: Any, objective: Objective, micro: list[Batch], accelerator: Any
    ) -> StepResult:
        """One DP step's forward and backward passes: each micro-batch but the last is clipped into the
        optimizer's running sum (a skipped step); the loop's optimizer step then noises and applies it."""
        drawn = int(sum(float(b[WEIGHT].sum()) for b in micro))
        tokens = sum(count_input_tokens(b) for b in micro) if drawn else 0
        loss_sum = torch.zeros((), device=accelerator.device)
        for i, host_batch in enumerate(micro):
            batch = {k: v.to(accelerator.device) for k, v in host_batch.items()}
            last = i == len(micro) - 1
            self.optimizer.signal_skip_step(do_skip=not last)
            losses = self.loss(model, batch) * batch[WEIGHT]
            # The mean, as Opacus' loss_reduction="mean" expects: its hooks multiply by the rows back.
            with warnings.catch_warnings():  # the first hooked layer's inputs need no gradient: fine
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                self.backward(losses, accelerator)
            loss_sum += losses.detach().sum()
            if not last:
                self.optimizer.step()  # clip and add up; no update
                self.optimizer.zero_grad()
        return StepResult(loss_sum / max(drawn, 1), drawn, tokens)


def check_private_model(model: Any) -> None:
    """Refuse, by name and all at once, every trainable layer Opacus cannot train privately: one its
    validators reject (batch norm, say, mixes examples), or one that keeps buffers. Called before the
    run folder exists. Opacus' own validation names the layer's type only, not where it is."""
    from opacus.utils.module_utils import trainable_modules
    from opacus.validators import ModuleValidator

    problems = []
    for name, module in trainable_modules(model):
        validator = ModuleValidator.VALIDATORS.get(type(module))
        reasons = [str(error) for error in validator(module)] if validator else []
        if list(module.buffers(recurse=False)):
            reasons.append("it keeps buffers, which would carry other examples' data")
        problems += [f"{name} ({type(module).__name__}): {reason}" for reason in reasons]
    if problems:
        raise TunelabError(
            "train.privacy: Opacus has no per-example gradient for these trainable layers",
            fix="freeze them (method: lora or freeze) or train without train.privacy",
            problems=problems,
        )


def make_private(
    model: Any,
    optimizer: torch.optim.Optimizer,
    batches: PoissonBatches,
    steps: int,
    task: str,
    device: Any,
    class_weights: list[float] | None = None,
) -> Privacy:
    """Opacus' DP optimizer around `optimizer` and its hooks on `model` (left unwrapped), with the noise
    calibrated so that `steps` steps at the batches' sample rate spend the target epsilon."""
    from opacus.accountants.utils import get_noise_multiplier

    cfg = batches.cfg.privacy
    assert cfg is not None
    delta = cfg.target_delta if cfg.target_delta is not None else 1 / len(batches.examples)
    sigma = get_noise_multiplier(
        target_epsilon=cfg.target_epsilon,
        target_delta=delta,
        sample_rate=batches.sample_rate,
        steps=steps,
        accountant=cfg.accountant,
    )
    model.train()  # Opacus validates a model in training mode; the before-training score left it in eval
    batches.noise = torch.Generator(device=device)
    clipping = "ghost" if ghost_applies(model) else "per-example"
    engine, hooks, dp_optimizer = _opacus(model, optimizer, batches, float(sigma), clipping)
    return Privacy(
        engine=engine,
        optimizer=dp_optimizer,
        hooks=hooks,
        loss=per_example_loss(task, class_weights),
        config=cfg,
        delta=delta,
        noise_multiplier=float(sigma),
        sample_rate=batches.sample_rate,
        expected_batch=int(dp_optimizer.expected_batch_size),
        clipping=clipping,
    )


def _opacus(
    model: Any, optimizer: torch.optim.Optimizer, batches: PoissonBatches, sigma: float, clipping: str
) -> tuple[Any, Any, Any]:
    """Opacus' PrivacyEngine.make_private: (engine, hooks on the model, DP optimizer)."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    cfg = batches.cfg
    assert cfg.privacy is not None
    # Opacus reads the sample rate off a data loader: one of the same length stands in for ours.
    stand_in = DataLoader(
        TensorDataset(torch.arange(len(batches.examples))), batch_size=cfg.batch_size * cfg.grad_accum
    )
    with warnings.catch_warnings():  # "secure RNG turned off": said in this module's docstring
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        engine = PrivacyEngine(accountant=cfg.privacy.accountant)
        made = engine.make_private(
            module=model,
            optimizer=optimizer,
            data_loader=stand_in,
            noise_multiplier=sigma,
            max_grad_norm=cfg.privacy.max_grad_norm,
            poisson_sampling=True,
            noise_generator=batches.noise,
            loss_reduction="mean",
            wrap_model=False,
            grad_sample_mode="ghost" if clipping == "ghost" else "hooks",
        )
    hooks, dp_optimizer, loader = made[0], made[1], made[-1]  # ghost mode also returns a criterion: unused
    assert math.isclose(loader.sample_rate, batches.sample_rate), "Opacus and tunelab disagree on q"
    return engine, hooks, dp_optimizer


def ghost_applies(model: Any) -> bool:
    """Ghost clipping needs a norm sampler for every trainable layer: Opacus has them for Linear and
    Embedding, so LoRA (and a new linear head) qualifies, and full fine-tuning (norms) does not."""
    from opacus.grad_sample import GradSampleModuleFastGradientClipping
    from opacus.utils.module_utils import trainable_modules

    samplers = GradSampleModuleFastGradientClipping.NORM_SAMPLERS
    return all(type(module) in samplers for _, module in trainable_modules(model))
