"""Houlsby bottleneck adapters: a small residual MLP after each block's attention and MLP output projection.

peft (0.21) has no serial bottleneck adapter, so this module is ours. For an output projection's result y
(before the block adds it to the residual stream and normalises):

    y -> y + up(act(down(y))),   down: hidden -> hidden / reduction_factor,   up: zero-initialised

so the adapted model starts out computing exactly what the base computes. The adapter hangs off the
projection as a child module (`<projection>.bottleneck_adapter`) and runs through a forward hook, which
leaves every base weight's name unchanged: checkpoints, `save_pretrained` of the base and the frozen
weights' keys stay as they were.

Adapters are NOT mergeable into the base weights: the bottleneck is non-linear, so no weight update
reproduces it. A trained model is the base plus `bottleneck_adapter.safetensors`, loaded with
`load_bottleneck`. The recipe's `adapter` method (its section, builder and registration) is
`tunelab/methods/bottleneck.py`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from tunelab.errors import ModelLoadError, RecipeError
from tunelab.models.methods import find_blocks, hidden_size

ADAPTER_NAME = "bottleneck_adapter"  # the child module's name on each adapted projection
CONFIG_FILE = "bottleneck_adapter.json"
WEIGHTS_FILE = "bottleneck_adapter.safetensors"
SETTINGS_ATTR = "bottleneck_settings"  # where the settings live on the adapted model
FORMAT_VERSION = 1

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}


@dataclass
class BottleneckSettings:
    reduction_factor: int
    non_linearity: str
    # Modules trained in full beside the adapters (a new classification head); saved with them.
    trainable_modules: list[str] = field(default_factory=list)
    # The adapted projections, recorded so loading can check it finds the same places.
    targets: list[str] = field(default_factory=list)
    format_version: int = FORMAT_VERSION


class BottleneckAdapter(nn.Module):
    def __init__(self, hidden_size: int, bottleneck_size: int, non_linearity: str) -> None:
        super().__init__()
        self.down = nn.Linear(hidden_size, bottleneck_size)
        self.act = ACTIVATIONS[non_linearity]()
        self.up = nn.Linear(bottleneck_size, hidden_size)
        # Zero up-projection: the adapter adds nothing until trained, so training starts from the base model.
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)
        self.enabled = True

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return y
        # The adapter keeps float32 weights under a bf16/fp16 (or 8-bit) base, as peft does for LoRA:
        # small updates to low-precision weights would round away.
        h = self.up(self.act(self.down(y.to(self.down.weight.dtype))))
        return y + h.to(y.dtype)


def add_bottleneck_adapters(
    model: Any, reduction_factor: int, non_linearity: str, trainable_modules: list[str]
) -> Any:
    """Freeze the base, insert an adapter after every attention and MLP output projection, and make the
    adapters and `trainable_modules` (a new head) trainable. Returns the same model, changed in place."""
    if is_bottleneck(model):
        raise RecipeError("method adapter: the model already has bottleneck adapters")
    if non_linearity not in ACTIVATIONS:
        raise RecipeError(
            f"method.non_linearity: must be one of {sorted(ACTIVATIONS)}, got {non_linearity!r}"
        )
    hidden = hidden_size(model)
    targets = find_output_projections(model, hidden)
    bottleneck = max(1, hidden // reduction_factor)
    for param in model.parameters():
        param.requires_grad_(False)
    for name in targets:
        projection = model.get_submodule(name)
        device = next(projection.parameters()).device
        projection.add_module(ADAPTER_NAME, BottleneckAdapter(hidden, bottleneck, non_linearity).to(device))
        projection.register_forward_hook(_run_adapter)
    for name in trainable_modules:
        model.get_submodule(name).requires_grad_(True)
    settings = BottleneckSettings(reduction_factor, non_linearity, list(trainable_modules), targets)
    setattr(model, SETTINGS_ATTR, settings)
    return model


def _run_adapter(module: nn.Module, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
    # A module-level function (not a closure over the adapter), so a deep-copied model runs its own copy.
    adapter: BottleneckAdapter = getattr(module, ADAPTER_NAME)
    return adapter(output)


def is_bottleneck(model: Any) -> bool:
    return any(isinstance(module, BottleneckAdapter) for module in model.modules())


@contextlib.contextmanager
def bottleneck_disabled(model: Any) -> Iterator[None]:
    """The base model's behaviour, without a second copy in memory (like peft's `disable_adapter`)."""
    adapters = [m for m in model.modules() if isinstance(m, BottleneckAdapter)]
    for adapter in adapters:
        adapter.enabled = False
    try:
        yield
    finally:
        for adapter in adapters:
            adapter.enabled = True


# ---------------------------------------------------------------------------------------------
# Where the adapters go


def find_output_projections(model: Any, hidden: int) -> list[str]:
    """Per block, per sub-layer (attention, MLP): the last linear layer, in registration order, that maps
    to the hidden size. That is the projection whose output the block adds to its residual stream:
    Llama o_proj / down_proj, BERT attention.output.dense / output.dense, GPT-2 attn.c_proj / mlp.c_proj.

    Projections are registered after the layers feeding them (q, k, v before o; gate, up before down),
    which is what makes "the last one" right without a per-architecture table.
    """
    names = {id(module): name for name, module in model.named_modules()}
    targets = []
    for block in find_blocks(model):
        for sublayer in _sublayers(block):
            to_hidden = [m for m in sublayer.modules() if _out_features(m) == hidden]
            if to_hidden:
                targets.append(names[id(to_hidden[-1])])
    if not targets:
        raise RecipeError(
            f"method adapter: no linear output projection to the hidden size ({hidden}) was found in the "
            f"model's blocks ({type(model).__name__})",
            fix="use method lora for this architecture",
        )
    return targets


def _sublayers(block: nn.Module) -> list[nn.Module]:
    """The block's direct children; a list of sub-layers (T5's `layer`) counts as its members."""
    found: list[nn.Module] = []
    for child in block.children():
        found.extend(child if isinstance(child, nn.ModuleList) else [child])
    return found


def _out_features(module: nn.Module) -> int | None:
    if isinstance(module, nn.Linear):  # bitsandbytes' quantised linears subclass it too
        return module.out_features
    if isinstance(module, Conv1D):  # GPT-2 style: a transposed linear
        return int(module.nf)
    return None


# ---------------------------------------------------------------------------------------------
# Save and load


def save_bottleneck(model: Any, folder: str | Path) -> None:
    """Write the settings (json) and the adapter + trainable-module weights only (safetensors)."""
    settings = _settings(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    # clone: tensors that share storage (tied weights) cannot be written to safetensors as they are.
    weights = {key: state[key].detach().clone().contiguous() for key in _saved_keys(state, settings)}
    save_file(weights, str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    (folder / CONFIG_FILE).write_text(json.dumps(asdict(settings), indent=2) + "\n", encoding="utf-8")


def load_bottleneck(
    model: Any, folder: str | Path, *, is_trainable: bool = False, trainable_dtype: torch.dtype | None = None
) -> Any:
    """Insert the adapters described in `folder` into a freshly loaded base model and load their weights.

    Strict: a weight missing from the file, or a weight in the file the model has no place for, is an
    error. As with peft's `from_pretrained`, the result is frozen unless `is_trainable`. `trainable_dtype`
    casts what trained (adapters, a new head) before the weights go in, as training kept them (float32
    masters over a bf16 base), so they are not rounded to the base's dtype on the way.
    """
    folder = Path(folder)
    saved = _read_settings(folder)
    add_bottleneck_adapters(model, saved.reduction_factor, saved.non_linearity, saved.trainable_modules)
    if trainable_dtype is not None:
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.to(trainable_dtype)
    settings = _settings(model)
    if settings.targets != saved.targets:
        raise ModelLoadError(
            f"{folder / CONFIG_FILE}: the adapters were trained on {len(saved.targets)} projections "
            f"({', '.join(saved.targets[:2])}, ...), this model has {len(settings.targets)} "
            f"({', '.join(settings.targets[:2])}, ...)",
            fix="load the adapter onto the base model it was trained on",
        )
    weights = load_file(str(folder / WEIGHTS_FILE))
    expected = set(_saved_keys(model.state_dict(), settings))
    missing, unexpected = sorted(expected - set(weights)), sorted(set(weights) - expected)
    if missing or unexpected:
        raise ModelLoadError(
            f"{folder / WEIGHTS_FILE} does not match the adapters: missing {missing[:3]}, "
            f"unexpected {unexpected[:3]}",
            fix="load the adapter onto the base model it was trained on",
        )
    model.load_state_dict(weights, strict=False)  # strict on the adapter's keys, checked above
    if not is_trainable:
        for param in model.parameters():
            param.requires_grad_(False)
    return model


def _settings(model: Any) -> BottleneckSettings:
    settings = getattr(model, SETTINGS_ATTR, None)
    if not isinstance(settings, BottleneckSettings):
        raise ValueError("the model has no bottleneck adapters (see add_bottleneck_adapters)")
    return settings


def _saved_keys(state: dict[str, Any], settings: BottleneckSettings) -> list[str]:
    prefixes = tuple(f"{name}." for name in settings.trainable_modules)
    return [key for key in state if f".{ADAPTER_NAME}." in key or key.startswith(prefixes)]


def _read_settings(folder: Path) -> BottleneckSettings:
    path = folder / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        settings = BottleneckSettings(**raw)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelLoadError(
            f"{path}: not a readable bottleneck adapter config ({exc})",
            fix="point at a folder written by save_bottleneck (a run's final/)",
        ) from None
    if settings.format_version != FORMAT_VERSION:
        raise ModelLoadError(f"{path}: format_version {settings.format_version}, expected {FORMAT_VERSION}")
    return settings
