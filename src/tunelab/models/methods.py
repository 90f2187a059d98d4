"""What every training method shares, on the model side: attaching the recipe's method (looked up in the
registry, `tunelab.methods.registry`), peft's task type for a task, wrapping a model with a peft config,
the rules for a quantised base, the transformer's blocks and width, and counting what trains.

The methods themselves, each family's recipe schema, builder and registration in one module, are in
`tunelab/methods/` (full.py, lora.py, ia3.py, prompt_learning.py, bottleneck.py); they import these
helpers, never the other way round. Every builder has the signature
`(model, cfg, task, new_modules, new_tokens) -> model`. `new_modules` are the modules the checkpoint did
not hold (a new classification head): whatever the method, they train in full, and adapter methods save
them with the adapter (peft's `modules_to_save`). Over a quantised base (qlora, or `model.load_in_8bit`),
peft's `prepare_model_for_kbit_training` runs first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from peft import PeftConfig, TaskType, get_peft_model, prepare_model_for_kbit_training

from tunelab.errors import RecipeError
from tunelab.methods.registry import method_spec, methods_where
from tunelab.models.peft_compat import fix_prefix_classifier
from tunelab.tasks.registry import is_task, task_names, task_spec


def peft_task_type(task: str) -> TaskType:
    """The head a task loads (tasks/registry.py) decides peft's task type: it picks the PeftModel subclass,
    which knows where the head is and how virtual tokens meet it."""
    if not is_task(task):
        raise RecipeError(f"task: no model head is known for task {task!r}; one of {', '.join(task_names())}")
    return TaskType[task_spec(task).head.peft_task_type]


def apply_method(
    model: Any, cfg: Any, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    """The registered method `cfg.name` attached. `new_tokens` are token ids added to the vocabulary (a
    chat template's markers): their embedding rows start untrained, so the method must train them."""
    spec = method_spec(cfg.name)
    if new_tokens and not spec.trains_new_tokens:
        raise RecipeError(
            f"method {cfg.name} cannot train the embeddings of tokens added to the vocabulary",
            fix=f"use method {' or '.join(methods_where('trains_new_tokens'))}",
        )
    return spec.build(model, cfg, task, new_modules, new_tokens)


def is_adapter(model: Any) -> bool:
    """A peft model: the base stays as loaded and the adapter is what trained."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total), counting tied weights once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        # bitsandbytes packs two 4-bit weights into each stored byte.
        count = param.numel() * (2 if type(param).__name__ == "Params4bit" else 1)
        total += count
        trainable += count if param.requires_grad else 0
    return trainable, total


# ---------------------------------------------------------------------------------------------
# The builders' shared steps


def attach_peft(model: Any, config: PeftConfig, where: str) -> Any:
    """`model` wrapped by peft with `config` (prepared first when quantised); peft's refusals of the
    settings become RecipeErrors at `where`, the recipe field at fault."""
    prepare_if_quantised(model)
    try:
        return fix_prefix_classifier(get_peft_model(model, config))
    except (ValueError, OSError) as exc:  # OSError: prompt init_text's tokenizer could not be loaded
        raise RecipeError(f"{where}: {exc}") from None


def is_quantised(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def prepare_if_quantised(model: Any) -> None:
    """Quantised bases need peft's preparation: norms and head upcast to float32, base frozen, and gradient
    checkpointing (non-reentrant, so inputs need not require grad) to fit the activations."""
    if is_quantised(model):
        prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )


def refuse_quantised(model: Any, method: str) -> None:
    if is_quantised(model):
        raise RecipeError(
            f"method {method}: a quantised (4/8-bit) base cannot be trained itself",
            fix="use an adapter method (lora, dora, ia3) over it, or load the base unquantised",
        )


def find_blocks(model: Any, method: str = "freeze") -> torch.nn.ModuleList:
    """The transformer's stack of blocks: the longest ModuleList whose members share one class."""
    candidates = [
        module
        for module in model.modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1
    ]
    if not candidates:
        raise RecipeError(
            f"method: {method} needs a model with a stack of transformer blocks; none was found"
        )
    return max(candidates, key=len)


def hidden_size(model: Any) -> int:
    """The width of the model's residual stream (of its text model, for a multimodal one)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    size = getattr(config, "hidden_size", None)
    return int(size) if size else int(model.get_input_embeddings().embedding_dim)
