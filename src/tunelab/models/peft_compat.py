"""The one place tunelab bridges peft and transformers where their locked versions disagree.

transformers 5.24 renamed the key-value cache argument of every model's `forward` from `past_key_values`
to `cache` (the old name is still accepted: `@deprecate_kwarg("past_key_values", new_name="cache")`
renames it on the way in). peft 0.21.2, the newest release, still picks its prefix-tuning route for
classifiers by looking for `past_key_values` in `inspect.signature(forward)`: it finds it in neither
`BertForSequenceClassification` nor `BertModel` and raises "Model does not support past key values".
The model does accept the prefix; only the look-up is stale. (peft's causal-LM route passes
`past_key_values=` unconditionally, which the decorator renames, with a FutureWarning, until 5.40.)

`tests/unit/test_peft_compat.py` asserts that stale look-up still fails with plain peft, so the test
goes red, and this module can go, on the day peft fixes it.
"""

from __future__ import annotations

import inspect
from typing import Any

from peft import PeftModel, PeftModelForSequenceClassification, PeftModelForTokenClassification, PeftType


def cache_argument(module: Any) -> str | None:
    """The name `module.forward` takes a key-value cache under, or None when it takes none."""
    parameters = inspect.signature(module.forward).parameters
    for name in ("cache", "past_key_values"):  # transformers >= 5.24, then older releases
        if name in parameters:
            return name
    return None


class _PrefixUnderItsName:
    """peft's prefix-tuning route for a classifier, handing the prefixes to the model under the name it
    takes.

    The classifier's own forward is called (as peft does when it finds the old name): its `**kwargs`
    carry the cache on to its backbone, and it applies its head (pooled, or per token) and loss, so
    nothing else changes.
    """

    base_model: Any
    transformer_backbone_name: str
    get_prompt: Any

    def _prefix_tuning_forward(
        self,
        input_ids: Any = None,
        attention_mask: Any = None,
        inputs_embeds: Any = None,
        labels: Any = None,
        output_attentions: Any = None,
        output_hidden_states: Any = None,
        return_dict: Any = None,
        **kwargs: Any,
    ) -> Any:
        rows = input_ids if input_ids is not None else inputs_embeds
        backbone = self.base_model.get_submodule(self.transformer_backbone_name)
        kwargs[cache_argument(backbone) or "past_key_values"] = self.get_prompt(batch_size=rows.shape[0])
        return self.base_model(
            input_ids=input_ids,
            attention_mask=attention_mask,  # peft has already put the prefix's ones in front
            inputs_embeds=inputs_embeds,
            labels=labels,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=return_dict,
            **kwargs,
        )


class PrefixTunedClassifier(_PrefixUnderItsName, PeftModelForSequenceClassification):
    """A sequence classifier (classify, reward) with prefix tuning."""


class PrefixTunedTokenClassifier(_PrefixUnderItsName, PeftModelForTokenClassification):
    """A token classifier (token_classify) with prefix tuning: peft's route has the same stale look-up."""


FIXED = {
    PeftModelForSequenceClassification: PrefixTunedClassifier,
    PeftModelForTokenClassification: PrefixTunedTokenClassifier,
}


def fix_prefix_classifier(model: Any) -> Any:
    """Give a peft prefix-tuned classifier the route above when its model names the cache `cache`.

    Applied where tunelab builds the peft model and where it loads one back, so training and restore
    take the same path. Any other model is returned as it is.
    """
    fixed = FIXED.get(type(model))
    if fixed is None or model.active_peft_config.peft_type != PeftType.PREFIX_TUNING:
        return model
    backbone = model.base_model.get_submodule(model.transformer_backbone_name)
    if cache_argument(model.base_model) == "cache" or cache_argument(backbone) == "cache":
        # A subclass that adds no state, so the instance keeps every weight and hook it has.
        model.__class__ = fixed
    return model


def load_peft_adapter(base: Any, folder: str | Any, *, trainable_dtype: Any = None) -> Any:
    """A saved peft adapter (with its modules_to_save) loaded onto `base` for inference.

    `trainable_dtype` (float32 for a run that kept float32 masters over a bf16 base) is the dtype the
    adapter's own weights are held in. peft upcasts LoRA-style weights itself, but copies a new head
    (modules_to_save) in the base's dtype, which would round the trained float32 head to bf16; those
    are cast and the saved weights loaded again, through peft's own key mapping.
    """
    model = fix_prefix_classifier(PeftModel.from_pretrained(base, str(folder)))
    if trainable_dtype is None:
        return model
    from peft.utils import load_peft_weights, set_peft_model_state_dict

    # Every tensor peft creates for an adapter has the adapter's name in its path (lora_A.default.weight,
    # classifier.modules_to_save.default.weight, prompt_encoder.default.embedding.weight).
    marker = f".{model.active_adapter}."
    cast = [p for name, p in model.named_parameters() if marker in name and p.dtype != trainable_dtype]
    for param in cast:
        param.data = param.data.to(trainable_dtype)
    if cast:
        set_peft_model_state_dict(model, load_peft_weights(str(folder)))
    return model
