"""The fused, chunked loss is the plain cross-entropy, only leaner: same value, same gradients.

First on flat tensors against `F.cross_entropy(reduction="sum")` over the full logits; then on the tiny
Llama (plain and peft-wrapped, padded and packed) against the logits path it replaces; then the models
it must refuse, which take the plain path.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from peft import IA3Config, LoraConfig, PromptTuningConfig, TaskType, get_peft_model
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from tests.conftest import random_labelled_examples
from tunelab.data.packing import collate_packed, pack_examples
from tunelab.data.tokenize import IGNORE_INDEX, collate
from tunelab.training import losses
from tunelab.training.losses import causal_lm_loss, chunked_linear_cross_entropy, output_head
from tunelab.training.objectives import causal_lm, causal_lm_targets, model_inputs

PAD = 1
UPSTREAM = 0.37  # backward from 0.37 · loss, not loss: a gradient that ignored the upstream scale would show


# ---------------------------------------------------------------------------------------------
# 1. Flat tensors


def flat_case(n: int = 40, h: int = 16, v: int = 50, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random hidden states, head and targets; every third target ignored, and positions 8..23 all
    ignored (more than any chunk size below, so a whole chunk's worth of positions carries no target)."""
    g = torch.Generator().manual_seed(seed)
    targets = torch.randint(0, v, (n,), generator=g)
    targets[::3] = IGNORE_INDEX
    targets[8:24] = IGNORE_INDEX
    return {
        "hidden": torch.randn(n, h, generator=g),
        "weight": torch.randn(v, h, generator=g) / h**0.5,
        "bias": torch.randn(v, generator=g),
        "targets": targets,
    }


def leaves(case: dict[str, torch.Tensor], with_grad: tuple[str, ...]) -> dict[str, torch.Tensor]:
    return {k: t.clone().requires_grad_(k in with_grad) for k, t in case.items()}


def reference_loss(
    hidden: torch.Tensor, weight: torch.Tensor, bias: Any, targets: torch.Tensor
) -> torch.Tensor:
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX, reduction="sum")


def loss_and_grads(fn: Any, tensors: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, Any]]:
    loss = fn(tensors["hidden"], tensors["weight"], tensors.get("bias"), tensors["targets"])
    (UPSTREAM * loss).backward()
    return loss.detach(), {k: t.grad for k, t in tensors.items() if k != "targets"}


def assert_same(got: tuple[torch.Tensor, dict], expected: tuple[torch.Tensor, dict]) -> None:
    torch.testing.assert_close(got[0], expected[0], rtol=1e-5, atol=1e-5)
    assert got[1].keys() == expected[1].keys()
    for name, grad in expected[1].items():
        if grad is None:
            assert got[1][name] is None, name
        else:
            torch.testing.assert_close(got[1][name], grad, rtol=1e-5, atol=1e-5, msg=name)


KEPT = 15  # targets left in flat_case(): 40 positions minus every third and minus 8..23


@pytest.mark.parametrize("chunk_size", [1, 3, 4, 5, 7, KEPT, 100])  # divides the 15 targets or not; one chunk
def test_chunked_equals_full_cross_entropy_in_value_and_gradients(chunk_size: int) -> None:
    case = flat_case()
    assert int((case["targets"] != IGNORE_INDEX).sum()) == KEPT

    def chunked(*args: Any) -> torch.Tensor:
        return chunked_linear_cross_entropy(*args, chunk_size=chunk_size)

    everything = ("hidden", "weight", "bias")
    expected = loss_and_grads(reference_loss, leaves(case, everything))
    got = loss_and_grads(chunked, leaves(case, everything))
    assert got[0].dtype == torch.float32 and got[0].dim() == 0
    assert_same(got, expected)
    # Ignored positions get a zero gradient, not a missing or stale one.
    assert torch.all(got[1]["hidden"][case["targets"] == IGNORE_INDEX] == 0)


def test_a_frozen_head_gets_no_gradient_and_the_hidden_states_the_right_one() -> None:
    case = {k: v for k, v in flat_case(seed=1).items() if k != "bias"}  # LoRA: lm_head frozen, no bias
    expected = loss_and_grads(reference_loss, leaves(case, ("hidden",)))
    got = loss_and_grads(lambda *a: chunked_linear_cross_entropy(*a, chunk_size=6), leaves(case, ("hidden",)))
    assert got[1]["weight"] is None
    assert_same(got, expected)


def test_no_targets_at_all_gives_zero_loss_and_zero_gradients() -> None:
    case = flat_case(seed=2)
    case["targets"][:] = IGNORE_INDEX
    got = loss_and_grads(chunked_linear_cross_entropy, leaves(case, ("hidden", "weight", "bias")))
    assert float(got[0]) == 0.0
    assert all(torch.all(g == 0) for g in got[1].values())  # zeros, so DDP still sees every gradient


def test_without_grad_mode_it_only_computes_the_loss() -> None:
    tensors = leaves(flat_case(seed=3), ("hidden", "weight", "bias"))
    with torch.no_grad():
        loss = chunked_linear_cross_entropy(
            tensors["hidden"], tensors["weight"], tensors["bias"], tensors["targets"], chunk_size=5
        )
        expected = reference_loss(tensors["hidden"], tensors["weight"], tensors["bias"], tensors["targets"])
    assert not loss.requires_grad
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


def test_the_head_matmul_sees_only_targets_and_at_most_a_chunk_of_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What makes the loss lean: no [N, V] logits, and ignored positions never reach the matmul.
    rows: list[int] = []
    linear = F.linear

    def recording_linear(x: torch.Tensor, *args: Any) -> torch.Tensor:
        rows.append(x.size(0))
        return linear(x, *args)

    monkeypatch.setattr(losses.F, "linear", recording_linear)
    case = leaves(flat_case(), ("hidden", "weight"))
    chunked_linear_cross_entropy(
        case["hidden"], case["weight"], None, case["targets"], chunk_size=4
    ).backward()
    assert rows == [4, 4, 4, 3]  # the 15 targets of 40 positions


def test_bad_shapes_and_chunk_sizes_are_refused() -> None:
    case = flat_case()
    hidden, weight, bias, targets = case["hidden"], case["weight"], case["bias"], case["targets"]
    for args in [
        (hidden[None], weight, bias, targets),
        (hidden, weight[:, :-1], bias, targets),
        (hidden, weight, bias[:-1], targets),
        (hidden, weight, bias, targets[:-1]),
    ]:
        with pytest.raises(ValueError):
            chunked_linear_cross_entropy(*args)
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_linear_cross_entropy(hidden, weight, bias, targets, chunk_size=0)


# ---------------------------------------------------------------------------------------------
# 2. On the tiny Llama: the fused objective equals the logits path it replaces


def padded_batch() -> dict[str, torch.Tensor]:
    return collate(random_labelled_examples(), PAD)


def packed_batch() -> dict[str, torch.Tensor]:
    return collate_packed(pack_examples(random_labelled_examples(), max_len=64), PAD)


def plain_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The logits path, written out here independently of the code under test."""
    logits = model(**model_inputs(batch), use_cache=False).logits
    shifted, targets = logits[:, :-1].float(), batch["labels"][:, 1:]
    return F.cross_entropy(
        shifted.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def run(
    model: Any, loss_fn: Any, batch: dict[str, torch.Tensor]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model, batch)
    (UPSTREAM * loss).backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads


def fused_loss(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = causal_lm(model, batch)
    assert out.logits is None, "the fused path was not taken"
    return out.loss_sum


def assert_fused_equals_plain(model: Any, batch: dict[str, torch.Tensor]) -> None:
    expected_loss, expected_grads = run(model, plain_loss, batch)
    loss, grads = run(model, fused_loss, batch)
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=1e-5)
    assert grads.keys() == expected_grads.keys() and len(grads) > 0
    for name, grad in expected_grads.items():
        assert grad.abs().sum() > 0, f"{name}: a zero gradient would make this comparison vacuous"
        torch.testing.assert_close(grads[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def load(tiny_llama: Path) -> Any:
    return AutoModelForCausalLM.from_pretrained(
        tiny_llama, dtype=torch.float32, attn_implementation="sdpa"
    ).eval()


def with_adapter(model: Any, method: str) -> Any:
    if method == "lora":
        # init_lora_weights=False: random B as well as A, so lora_A's gradient is not identically zero.
        config: Any = LoraConfig(
            r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type=TaskType.CAUSAL_LM
        )
    elif method == "dora":
        config = LoraConfig(
            r=4,
            target_modules=["q_proj", "v_proj"],
            use_dora=True,
            init_lora_weights=False,
            task_type=TaskType.CAUSAL_LM,
        )
    else:
        config = IA3Config(
            target_modules=["k_proj", "v_proj", "down_proj"],
            feedforward_modules=["down_proj"],
            init_ia3_weights=False,
            task_type=TaskType.CAUSAL_LM,
        )
    return get_peft_model(model, config)


@pytest.mark.parametrize("make_batch", [padded_batch, packed_batch], ids=["padded", "packed"])
def test_fused_equals_plain_on_a_fully_trained_llama(tiny_llama: Path, make_batch: Any) -> None:
    assert_fused_equals_plain(load(tiny_llama), make_batch())


@pytest.mark.parametrize("method", ["lora", "dora", "ia3"])
@pytest.mark.parametrize("make_batch", [padded_batch, packed_batch], ids=["padded", "packed"])
def test_fused_equals_plain_on_a_peft_wrapped_llama(tiny_llama: Path, method: str, make_batch: Any) -> None:
    model = with_adapter(load(tiny_llama), method)
    assert not model.get_output_embeddings().weight.requires_grad  # the head is frozen: no V × H gradient
    assert_fused_equals_plain(model, make_batch())


def test_fused_equals_plain_with_tied_embeddings() -> None:
    # The head's weight is the input embedding: both uses must add into the one gradient.
    config = LlamaConfig(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert_fused_equals_plain(model, padded_batch())


def test_the_target_count_is_returned_and_packing_and_chunking_change_nothing(tiny_llama: Path) -> None:
    model = load(tiny_llama)
    with torch.no_grad():
        padded = causal_lm_loss(model, padded_batch())
        packed = causal_lm_loss(model, packed_batch())
        chunked = causal_lm_loss(model, padded_batch(), chunk_size=7)  # many chunks, the last one short
    assert padded is not None and packed is not None and chunked is not None
    assert padded[1] == packed[1] == chunked[1] == causal_lm_targets(padded_batch()) > 7
    torch.testing.assert_close(packed[0], padded[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked[0], padded[0], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# 3. What the fused loss refuses takes the plain path


def test_prompt_tuning_and_an_adapted_head_take_the_plain_path(tiny_llama: Path) -> None:
    prompt = get_peft_model(
        load(tiny_llama), PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3)
    )
    lora_head = get_peft_model(load(tiny_llama), LoraConfig(r=4, target_modules=["lm_head", "q_proj"]))
    saved_head = get_peft_model(
        load(tiny_llama), LoraConfig(r=4, target_modules=["q_proj"], modules_to_save=["lm_head"])
    )
    batch = padded_batch()
    for model in (prompt, lora_head, saved_head):
        assert output_head(model) is None
        assert causal_lm_loss(model, batch) is None
        out = causal_lm(model, batch)
        assert out.logits is not None  # the plain path ran
        torch.testing.assert_close(out.loss_sum, plain_loss_aligned(model, batch), rtol=1e-5, atol=1e-5)


def plain_loss_aligned(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    logits = model(**model_inputs(batch), use_cache=False).logits[:, -batch["labels"].size(1) :]
    shifted, targets = logits[:, :-1].float(), batch["labels"][:, 1:]
    return F.cross_entropy(
        shifted.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )


def test_a_config_that_scales_or_caps_logits_takes_the_plain_path(tiny_llama: Path) -> None:
    for field, value in [("final_logit_softcapping", 30.0), ("logit_scale", 0.0625), ("logits_scaling", 8.0)]:
        model = load(tiny_llama)
        setattr(model.config, field, value)
        assert output_head(model) is None, field


def test_logits_changed_after_the_head_are_caught_and_the_plain_path_used(tiny_llama: Path) -> None:
    # A model that changes its logits after the head in a way LOGIT_TRANSFORMS does not know: the check
    # after the forward sees that the loss came back altered, and the plain loss (of the altered logits) is used.
    model = load(tiny_llama)

    def double_logits(module: Any, args: Any, output: Any) -> Any:
        output.logits = output.logits * 2
        return output

    model.register_forward_hook(double_logits)
    batch = padded_batch()
    assert output_head(model) is not None
    with pytest.warns(UserWarning, match="fused causal-LM loss did not apply"):
        out = causal_lm(model, batch)
    assert out.logits is not None
    torch.testing.assert_close(out.loss_sum, plain_loss(model, batch), rtol=1e-5, atol=1e-5)


def test_hidden_states_that_do_not_line_up_with_the_labels_are_left_alone(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were the up-front check to miss prompt tuning, the head would see 3 virtual positions more than
    # there are labels: the hooks must stand aside, and the caller gets None rather than a shifted loss.
    model = get_peft_model(
        load(tiny_llama), PromptTuningConfig(task_type=TaskType.CAUSAL_LM, num_virtual_tokens=3)
    )
    monkeypatch.setattr(losses, "output_head", lambda m: m.get_base_model().get_output_embeddings())
    with pytest.warns(UserWarning, match="fused causal-LM loss did not apply"):
        assert causal_lm_loss(model, padded_batch()) is None
    assert not model.get_base_model().get_output_embeddings()._forward_hooks  # the hooks are gone again


def test_the_model_is_checked_for_altered_logits_on_its_first_step_only(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The check compares values, which waits for the device; a model's logit handling does not change
    # between batches, so later steps skip it.
    model = load(tiny_llama)
    compared: list[int] = []
    real_equal = torch.equal
    monkeypatch.setattr(torch, "equal", lambda a, b: compared.append(1) or real_equal(a, b))
    for _ in range(3):
        assert causal_lm(model, padded_batch()).logits is None  # the fused path
    assert len(compared) == 1
