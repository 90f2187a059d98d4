"""Training setup: the loaded model made trainable, its objective, batches, optimizer and schedule.

`tunelab train` and `tunelab plan`'s probe both call `build_training`, so the probe measures the very
setup a run uses, in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from tunelab.data.mixture import MixedOrder
from tunelab.data.packing import check_packing_supported, collate_packed
from tunelab.errors import TunelabError
from tunelab.models.load import LoadedModel, load_model, quantisation_for
from tunelab.models.methods import apply_method
from tunelab.models.precision import Precision
from tunelab.training.loop import MicroBatches, StepBatches, TrainState
from tunelab.training.objectives import Objective, build_objective, collate_for
from tunelab.training.precision import upcast_trainable
from tunelab.training.schedule import build_optimizer, build_scheduler, total_steps
from tunelab.training.speed import compile_blocks, enable_gradient_checkpointing

if TYPE_CHECKING:
    from tunelab.config import Recipe
    from tunelab.data.pipeline import PreparedData
    from tunelab.training.privacy import Privacy


@dataclass
class TrainingSetup:
    model: Any  # prepared by accelerate (wrapped under DDP)
    optimizer: Any
    scheduler: Any
    objective: Objective
    batches: StepBatches
    steps: int  # optimizer steps in the run
    state: TrainState
    mixed: MixedOrder | None = None  # a multi-dataset run's order
    privacy: Privacy | None = None  # train.privacy: Opacus' engine, DP optimizer and budget
    class_weights: list[float] | None = None  # train.class_weights: auto, one per label id


def load_for_training(
    recipe: Recipe, label_map: dict[str, int] | None, tokenizer: Any, precision: Precision
) -> LoadedModel:
    """The base model as training loads it: quantised as the method asks, in the precision's weight dtype."""
    return load_model(
        recipe.model,
        recipe.task,
        label_map,
        tokenizer=tokenizer,
        quantisation=quantisation_for(recipe.method.name, recipe.model.load_in_8bit),
        dtype=precision.weights,
    )


def attach_method(
    recipe: Recipe,
    loaded: LoadedModel,
    precision: Precision,
    data: PreparedData,
    *,
    compile_model: bool = True,
) -> Any:
    """The loaded base made ready to train: checkpointing (before peft wraps it), the method (training
    the rows of tokens the data stage added too), float32 master weights under autocast, and regional
    compilation (`compile_model=False` skips it)."""
    if recipe.train.gradient_checkpointing:
        enable_gradient_checkpointing(loaded.model)
    new_tokens = loaded.tokenizer.convert_tokens_to_ids(data.added_tokens) if data.added_tokens else []
    model = apply_method(loaded.model, recipe.method, recipe.task, loaded.new_modules, new_tokens)
    upcast_trainable(model, precision)
    if recipe.train.compile and compile_model:
        compile_blocks(model)
    if data.packed:
        check_packing_supported(model)
    return model


def train_batches(
    recipe: Recipe, data: PreparedData, pad_id: int, accelerator: Any
) -> tuple[MicroBatches, MixedOrder | None]:
    """The training stream: length-grouped (unless packed), in a mixture's order for several datasets."""
    cfg = recipe.train
    train = data.splits["train"]
    mixed = (
        MixedOrder(recipe.data, train, cfg.seed, cfg.epochs) if any("dataset" in e for e in train) else None
    )
    batches = MicroBatches(
        train,
        cfg.batch_size,
        cfg.seed,
        pad_id,
        accelerator,
        collate_fn=collate_packed if data.packed else collate_for(recipe.task),
        order_fn=mixed,
        # Not for KTO: sorted by length, short answers (often the undesirable ones) share batches, and a
        # batch of one kind reads its KL reference point off that kind's own rewards: no signal is left.
        group_by_length=cfg.group_by_length and not data.packed and recipe.preference.objective != "kto",
        grad_accum=cfg.grad_accum,
    )
    return batches, mixed


def build_training(
    recipe: Recipe, model: Any, data: PreparedData, pad_id: int, accelerator: Any
) -> TrainingSetup:
    """Objective, batches, the run's length, AdamW and its schedule, with the model and optimizer
    prepared by accelerate (the scheduler is not: accelerate's wrapper would step it once per process)."""
    cfg = recipe.train
    weights = class_weights(recipe, data) if cfg.class_weights == "auto" else None
    objective = build_objective(recipe, model, class_weights=weights)
    batches: StepBatches
    if cfg.privacy is not None:
        batches, mixed = private_batches(recipe, data, pad_id, model), None
    else:
        batches, mixed = train_batches(recipe, data, pad_id, accelerator)
    steps = total_steps(cfg, batches.per_epoch)
    if mixed is not None:  # a progressive schedule ramps over the steps the run really takes
        mixed.epochs = steps * cfg.grad_accum / batches.per_epoch
    optimizer, privacy = build_optimizer(model, cfg), None
    if cfg.privacy is not None:
        from tunelab.training.privacy import PoissonBatches, make_private

        assert isinstance(batches, PoissonBatches)
        if accelerator.num_processes > 1:
            raise TunelabError("train.privacy runs on one process", fix="train without --nproc")
        privacy = make_private(model, optimizer, batches, steps, recipe.task, accelerator.device, weights)
        optimizer = privacy.optimizer
    model, optimizer = accelerator.prepare(model, optimizer)
    scheduler = build_scheduler(optimizer, cfg, steps)
    return TrainingSetup(
        model, optimizer, scheduler, objective, batches, steps, TrainState(), mixed, privacy, weights
    )


def private_batches(recipe: Recipe, data: PreparedData, pad_id: int, model: Any) -> StepBatches:
    """DP's Poisson-sampled batches, with per-row positions for models whose forward takes them."""
    import inspect

    from tunelab.training.privacy import PoissonBatches

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    takes_positions = "position_ids" in inspect.signature(base.forward).parameters
    return PoissonBatches(
        data.splits["train"], recipe.train, pad_id, collate_for(recipe.task), position_ids=takes_positions
    )


def class_weights(recipe: Recipe, data: PreparedData) -> list[float]:
    """train.class_weights: auto: scikit-learn's "balanced" weights, n / (classes x count), from the
    train split as it is trained on (after data.balance), one per label id."""
    from sklearn.utils.class_weight import compute_class_weight

    assert data.label_map is not None
    labels = [int(e["label"]) for e in data.splits["train"]]
    classes = sorted(data.label_map.values())
    present = sorted(set(labels))
    if present != classes:
        missing = sorted(set(classes) - set(present))
        raise TunelabError(
            f"train.class_weights: auto needs every class in train; label ids {missing} never occur",
            fix="add examples of those classes or set train.class_weights: none",
        )
    return [float(w) for w in compute_class_weight("balanced", classes=np.array(classes), y=labels)]
