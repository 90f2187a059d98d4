"""The model's shape and parameters, without reading its weights: the recipe's model is built on the
`meta` device (shapes and dtypes, no data), its method attached, and its parameters counted."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

from tunelab.plan.memory import ModelShape, ParamFacts
from tunelab.tasks.registry import task_spec

if TYPE_CHECKING:  # the heavy imports (torch, transformers) happen inside the functions that need them
    from tunelab.config import Recipe


# bitsandbytes storage per quantised weight: NF4 packs two per byte, plus an 8-bit absmax per block of
# 64 and (double quantisation) a float32 per 256 blocks; LLM.int8 is one byte plus a float32 per row.
NF4_BYTES_PER_WEIGHT = 0.5 + 1 / 64 + 4 / (64 * 256)
INT8_BYTES_PER_WEIGHT = 1.0
# Modules that stay unquantised (see models/load.py): the output head and new classification heads.
UNQUANTISED_HEADS = ("lm_head", "classifier", "score", "pooler")

Quantisation = Literal["4bit", "8bit"]


def model_shape(config: Any, gated_mlp: bool) -> ModelShape:
    """ModelShape from a transformers config (a multimodal config's text part)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = int(_config_value(text, "hidden_size", "n_embd", "d_model"))
    heads = int(_config_value(text, "num_attention_heads", "n_head"))
    return ModelShape(
        hidden_size=hidden,
        # GPT-2 style configs leave the MLP width unset (n_inner: None), meaning 4 x hidden.
        intermediate_size=int(
            _config_value(text, "intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)
        ),
        num_layers=int(_config_value(text, "num_hidden_layers", "n_layer")),
        num_heads=heads,
        num_kv_heads=int(_config_value(text, "num_key_value_heads", default=heads)),
        vocab_size=int(_config_value(text, "vocab_size")),
        gated_mlp=gated_mlp,
        attention_dropout=float(
            _config_value(
                text, "attention_probs_dropout_prob", "attention_dropout", "attn_pdrop", default=0.0
            )
        ),
        eager_attention=getattr(config, "_attn_implementation", None) == "eager",
    )


def _config_value(config: Any, *names: str, default: Any = None) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    if default is None:
        from tunelab.errors import ModelLoadError

        raise ModelLoadError(f"the model's config has none of {', '.join(names)}; cannot estimate its memory")
    return default


def has_gated_mlp(model: Any, intermediate_size: int) -> bool:
    """Two projections up to the MLP width in one block (gate and up) mean a gated MLP; read from the
    model's structure rather than from a table of architectures."""
    import torch

    from tunelab.errors import RecipeError
    from tunelab.models.methods import find_blocks

    try:
        block = find_blocks(model, "plan")[0]
    except RecipeError:  # no stack of blocks to look at: count it as the plainer MLP
        return False
    widening = [
        m for m in block.modules() if isinstance(m, torch.nn.Linear) and m.out_features == intermediate_size
    ]
    return len(widening) >= 2


def meta_model(recipe: Recipe, label_map: dict[str, int] | None) -> tuple[Any, list[str]]:
    """The recipe's model on the `meta` device (shapes and dtypes, no data) and the modules its checkpoint
    lacks (a new head), found as load_model finds them: from from_pretrained's loading info."""
    import torch

    from tunelab.models import load
    from tunelab.models.precision import precision_for
    from tunelab.models.source import hub_offline, model_source

    source, local = model_source(recipe.model.name)
    options: dict[str, Any] = {
        "trust_remote_code": recipe.model.trust_remote_code,
        "revision": recipe.model.revision,
        "local_files_only": local or hub_offline(),
        "device_map": "meta",
    }
    try:
        # The device context also puts whatever a method adds later (adapters) on meta.
        with torch.device("meta"):
            # The dtype `train` loads in: float32 masters for full/freeze, the compute dtype for a frozen base.
            weights = precision_for(recipe).weights
            model, info = load._load_weights(source, recipe.task, label_map, weights, options)
    except (OSError, ValueError) as exc:
        raise load._not_loadable(recipe.model.name, source, local, exc) from None
    return model, sorted({key.rsplit(".", 1)[0] for key in info.get("missing_keys", [])})


def param_facts(model: Any, quantisation: Quantisation | None = None) -> ParamFacts:
    """Counts and bytes of a (meta) model's parameters, tied weights once. With `quantisation`, the
    frozen Linear weights are stored as bitsandbytes would, and every other parameter in float32 (peft's
    prepare_model_for_kbit_training upcasts them)."""
    import torch

    seen: set[int] = set()
    total = trainable = weight_bytes = trainable_bytes = 0
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            count = param.numel()
            size = count * param.element_size()
            if quantisation is not None:
                quantised = (
                    name == "weight"
                    and not param.requires_grad
                    and isinstance(module, torch.nn.Linear)
                    and not set(module_name.split(".")) & set(UNQUANTISED_HEADS)
                )
                size = _quantised_bytes(module, count, quantisation) if quantised else count * 4
            total += count
            weight_bytes += size
            if param.requires_grad:
                trainable += count
                trainable_bytes += size
    return ParamFacts(total, trainable, weight_bytes, trainable_bytes, _head_grad_bytes(model))


def _quantised_bytes(module: Any, count: int, quantisation: Quantisation) -> int:
    if quantisation == "4bit":
        return math.ceil(count * NF4_BYTES_PER_WEIGHT)
    return int(count * INT8_BYTES_PER_WEIGHT) + 4 * module.out_features  # + a float32 scale per row


def _head_grad_bytes(model: Any) -> int:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    weight = getattr(head, "weight", None)
    if weight is None or not weight.requires_grad:
        return 0
    return int(weight.numel() * weight.element_size())


def fused_loss_applies(model: Any, task: str) -> bool:
    """Whether objectives.causal_lm will take training/losses.py's fused path for this model (a plain
    Linear head, no virtual tokens). False while that module is absent."""
    if not task_spec(task).token_loss:
        return False  # e.g. preference objectives compute their log-probabilities from full logits
    try:
        from tunelab.training.losses import output_head
    except ImportError:
        return False
    return output_head(model) is not None


def method_facts(
    recipe: Recipe, method: Any, label_map: dict[str, int] | None, quantisation: Quantisation | None
) -> tuple[ParamFacts, bool, ModelShape]:
    """Build the model on the meta device, attach `method`, and count: (parameters, whether the fused
    loss applies, the model's shape). A quantised base is counted unquantised and then sized as
    bitsandbytes stores it (bitsandbytes cannot quantise meta tensors)."""
    from tunelab.methods.lora import LoraMethod
    from tunelab.methods.registry import method_spec
    from tunelab.models.methods import apply_method

    model, new_modules = meta_model(recipe, label_map)
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    width = int(_config_value(config, "intermediate_size", "n_inner", "ffn_dim", default=-1))
    shape = model_shape(model.config, has_gated_mlp(model, width))
    if method_spec(method.name).quantised_base is not None and isinstance(method, LoraMethod):
        # apply_qlora wants a 4-bit model; on the meta device the adapters are LoRA's all the same.
        method = LoraMethod(**{**method.model_dump(), "name": "lora"})
    model = apply_method(model, method, recipe.task, new_modules)
    return param_facts(model, quantisation), fused_loss_applies(model, recipe.task), shape
