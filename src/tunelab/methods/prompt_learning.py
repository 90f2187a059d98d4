"""The virtual-token methods (through peft), prefix tuning and prompt tuning: their recipe sections,
builders and registration (`METHODS`, which the registry loads by this module's name).

peft and the model-side helpers are imported when a model is built, so reading a recipe stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field

from tunelab.errors import RecipeError
from tunelab.methods.registry import MethodConfig, MethodSpec


class PrefixMethod(MethodConfig):
    name: Literal["prefix"] = Field(description="Prefix tuning: trained key/value prefixes in every layer.")
    num_virtual_tokens: int = Field(20, gt=0, description="Length of the trained prefix.")
    projection: bool = Field(
        False, description="Reparameterise the prefix through an MLP (more stable, more to train)."
    )


class PromptMethod(MethodConfig):
    name: Literal["prompt"] = Field(description="Prompt tuning: trained soft-prompt embeddings.")
    num_virtual_tokens: int = Field(20, gt=0, description="Length of the trained soft prompt.")
    init_text: str | None = Field(
        None, description="Initialise the soft prompt from this text's embeddings (else random)."
    )


def apply_prefix(
    model: Any, cfg: PrefixMethod, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    """Prefix tuning: trained key/value prefixes, handed to every layer as a past key-value cache."""
    from peft import PrefixTuningConfig

    from tunelab.models.methods import attach_peft, hidden_size, peft_task_type

    _require_key_value_cache(model)
    config = PrefixTuningConfig(
        task_type=peft_task_type(task),
        num_virtual_tokens=cfg.num_virtual_tokens,
        prefix_projection=cfg.projection,
        # The reparameterising MLP's width; peft has no default for it, the model's width is the usual one.
        encoder_hidden_size=hidden_size(model),
        modules_to_save=list(new_modules) or None,  # a copy: peft appends to it
    )
    return attach_peft(model, config, "method")


def apply_prompt(
    model: Any, cfg: PromptMethod, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    """Prompt tuning: trained soft-prompt embeddings put before the input's.

    With a causal LM the logits gain one position per virtual token, at the front: callers that align
    logits with input_ids must drop the first `num_virtual_tokens` positions (`logits[:, -seq_len:]`).
    """
    from peft import PromptTuningConfig, PromptTuningInit, TaskType

    from tunelab.models.methods import attach_peft, peft_task_type

    if peft_task_type(task) == TaskType.SEQ_CLS and _pools_last_token(model):
        raise RecipeError(
            f"method prompt: {type(model).__name__} classifies from the last non-padding token, which it "
            "finds from input_ids; with a soft prompt peft passes embeddings instead, so padded batches "
            "would be classified from a padding position",
            fix="use method prefix or lora with this model, or an encoder model (BERT-like) for prompt tuning",
        )
    text = cfg.init_text
    config = PromptTuningConfig(
        task_type=peft_task_type(task),
        num_virtual_tokens=cfg.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=text,
        # peft tokenizes init_text itself, loading the tokenizer from here: the folder or Hub id the
        # model was loaded from (offline mode and the Hub cache apply as for the model).
        tokenizer_name_or_path=_model_source(model) if text else None,
        modules_to_save=list(new_modules) or None,  # a copy: peft appends to it
    )
    return attach_peft(model, config, "method.init_text" if text else "method")


def _require_key_value_cache(model: Any) -> None:
    """peft hands prefixes to the model as a key-value cache; a model that takes none cannot use them."""
    from tunelab.models.peft_compat import cache_argument

    backbone = getattr(model, "base_model", model)
    if cache_argument(model) is None and cache_argument(backbone) is None:
        raise RecipeError(
            f"method prefix: {type(model).__name__} takes no key-value cache (past_key_values / cache), "
            "which prefix tuning feeds its prefixes through",
            fix="use method prompt or lora with this model",
        )


def _pools_last_token(model: Any) -> bool:
    """Decoder-style classifiers read the last non-padding token; encoders (with a masked-LM head in
    transformers' tables) read the first token or a masked mean, which a soft prompt does not disturb."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return getattr(model.config, "model_type", None) not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _model_source(model: Any) -> str:
    source = getattr(model.config, "_name_or_path", "")
    if not source:
        raise RecipeError(
            "method.init_text: the model does not record where it was loaded from, so its tokenizer "
            "cannot be found to embed init_text",
            fix="remove method.init_text (random initialisation)",
        )
    return str(source)


METHODS = (
    MethodSpec("prefix", PrefixMethod, apply_prefix, virtual_tokens=True),
    MethodSpec("prompt", PromptMethod, apply_prompt, virtual_tokens=True),
)
