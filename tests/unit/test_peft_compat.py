"""The peft/transformers bridge in models/peft_compat.py, and the upstream behaviour it exists for."""

from __future__ import annotations

import inspect

import pytest
import torch
from peft import PrefixTuningConfig, TaskType, get_peft_model
from transformers import BertConfig, BertForSequenceClassification, BertModel

from tunelab.models.peft_compat import PrefixTunedClassifier, cache_argument, fix_prefix_classifier


def tiny_classifier() -> BertForSequenceClassification:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=32,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return BertForSequenceClassification(config).eval()


def prefix_config() -> PrefixTuningConfig:
    return PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=3, encoder_hidden_size=16)


BATCH = {
    "input_ids": torch.tensor([[1, 5, 7, 9], [1, 4, 2, 0]]),
    "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]]),
}


def test_transformers_names_the_cache_argument_cache() -> None:
    """transformers >= 5.24: `cache`, with `past_key_values` only renamed by a decorator."""
    assert "cache" in inspect.signature(BertModel.forward).parameters
    assert "past_key_values" not in inspect.signature(BertModel.forward).parameters
    assert (
        cache_argument(BertModel(BertConfig(vocab_size=10, hidden_size=8, num_attention_heads=2))) == "cache"
    )


def test_plain_peft_still_refuses_prefix_tuning_on_a_bert_classifier() -> None:
    """peft 0.21.2 looks for `past_key_values` in the signature. When this test fails, peft has fixed its
    look-up: drop PrefixTunedClassifier and this test."""
    model = get_peft_model(tiny_classifier(), prefix_config())
    with pytest.raises(ValueError, match="does not support past key values"):
        model(**BATCH)


def test_the_fixed_classifier_feeds_the_prefixes_and_trains_them() -> None:
    model = fix_prefix_classifier(get_peft_model(tiny_classifier(), prefix_config()))
    assert isinstance(model, PrefixTunedClassifier)
    labels = torch.tensor([0, 2])
    out = model(**BATCH, labels=labels)
    assert out.logits.shape == (2, 3)
    out.loss.backward()
    prefix = model.prompt_encoder["default"].embedding.weight
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0  # the prefixes reach the attention
    # And they are what the classifier sees: other prefixes, other logits.
    with torch.no_grad():
        before = model(**BATCH).logits
        prefix.add_(1.0)
        after = model(**BATCH).logits
    assert not torch.allclose(before, after)


def test_fix_leaves_other_models_alone() -> None:
    from peft import LoraConfig

    lora = get_peft_model(tiny_classifier(), LoraConfig(task_type=TaskType.SEQ_CLS, target_modules=["query"]))
    assert type(fix_prefix_classifier(lora)) is type(lora)
