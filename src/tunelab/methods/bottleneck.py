"""The bottleneck adapter (Houlsby; peft has none): its recipe section, builder and registration
(`METHODS`, which the registry loads by this module's name).

The adapter modules, their hooks and their save/load are in `tunelab/models/adapters.py`, which restoring
a run needs without the method's schema; they are imported when a model is built, so reading a recipe
stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from tunelab.methods.registry import MethodConfig, MethodSpec


class AdapterMethod(MethodConfig):
    name: Literal["adapter"] = Field(
        description="Bottleneck adapters (Houlsby) after each block's attention and MLP; the base stays frozen."
    )
    reduction_factor: int = Field(16, gt=0, description="hidden size / adapter bottleneck size.")
    non_linearity: Literal["relu", "gelu", "silu"] = Field("relu", description="The bottleneck's activation.")


def apply_adapter(
    model: Any, cfg: AdapterMethod, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    """Houlsby bottleneck adapters after each attention and MLP output projection (not mergeable)."""
    from tunelab.models.adapters import add_bottleneck_adapters
    from tunelab.models.methods import prepare_if_quantised

    prepare_if_quantised(model)
    return add_bottleneck_adapters(model, cfg.reduction_factor, cfg.non_linearity, new_modules)


METHODS = (MethodSpec("adapter", AdapterMethod, apply_adapter),)
