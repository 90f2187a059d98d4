"""train.privacy (DP-SGD through Opacus): one step's clipped and noised gradient against a hand-computed
reference, the epsilon spent against the target, resume against an uninterrupted DP run, and the
recipe checks and layer refusals."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator

from tests.conftest import (
    crash_at_checkpoint,
    make_recipe,
    only_run_dir,
    random_labelled_examples,
    save_tiny_bert,
)
from tunelab.config import TrainConfig, load_recipe
from tunelab.data.tokenize import IGNORE_INDEX, collate
from tunelab.errors import RecipeError, TunelabError
from tunelab.runner import train
from tunelab.training.loop import TrainState
from tunelab.training.privacy import PoissonBatches, check_private_model, make_private, step_seed

# 16 examples, 8 expected per step (batch_size 2 x grad_accum 4): a drawn batch is cut into several
# micro-batches, so the test covers Opacus' skipped steps (clip and add up) as well as the last one.
DP_TRAIN = {
    "batch_size": 2,
    "grad_accum": 4,
    "seed": 3,
    "privacy": {"target_epsilon": 4.0, "max_grad_norm": 0.5},
}


def tiny_classifier(tmp_path: Path) -> Any:
    """A BERT classifier trained in full: its position embeddings are the broadcast-positions trap."""
    from transformers import BertForSequenceClassification

    folder = save_tiny_bert(tmp_path / "bert", dropout=0.0)  # no dropout: the reference reruns each row
    torch.manual_seed(0)
    return BertForSequenceClassification.from_pretrained(folder, num_labels=3)


def tiny_lora_llama(tiny_llama: Path) -> Any:
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    base = LlamaForCausalLM.from_pretrained(tiny_llama)
    return get_peft_model(
        base, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"])
    )


def classify_examples(n: int = 16) -> list[dict[str, Any]]:
    generator = torch.Generator().manual_seed(1)
    return [
        {"input_ids": torch.randint(10, 300, (int(length),), generator=generator).tolist(), "label": i % 3}
        for i, length in enumerate(torch.randint(4, 12, (n,), generator=generator))
    ]


def example_loss(model: Any, example: dict[str, Any], task: str) -> torch.Tensor:
    """One example alone, unpadded, with the model's own positions: the loss DP clips, by hand."""
    ids = torch.tensor([example["input_ids"]])
    if task == "classify":
        return F.cross_entropy(model(input_ids=ids).logits, torch.tensor([example["label"]]))
    logits = model(input_ids=ids, use_cache=False).logits[0, :-1]
    targets = torch.tensor(example["labels"][1:])
    return F.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)


def reference_gradient(
    model: Any,
    examples: list[dict[str, Any]],
    task: str,
    cfg: TrainConfig,
    sigma: float,
    expected: int,
    seed: int,
) -> dict[str, torch.Tensor]:
    """DP-SGD's gradient written out: each drawn example's gradient clipped to C, summed, plus
    N(0, (sigma C)^2) drawn parameter by parameter from the seeded generator, over the expected batch."""
    assert cfg.privacy is not None
    clip = cfg.privacy.max_grad_norm
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    total = {name: torch.zeros_like(p) for name, p in params}
    for example in examples:
        grads = torch.autograd.grad(example_loss(model, example, task), [p for _, p in params])
        norm = torch.cat([g.flatten() for g in grads]).norm()
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for (name, _), g in zip(params, grads, strict=True):
            total[name] += factor * g
    generator = torch.Generator().manual_seed(seed)
    for name, p in params:
        total[name] += torch.normal(0, sigma * clip, p.shape, generator=generator)
    return {name: value / expected for name, value in total.items()}


def one_private_step(
    model: Any, examples: list[dict[str, Any]], task: str, cfg: TrainConfig
) -> dict[str, Any]:
    """tunelab's DP step: Poisson draw, micro-batches, Opacus' clipping, noise; the gradient it applies."""
    accelerator = Accelerator(cpu=True)
    batches = PoissonBatches(examples, cfg, 0, collate, position_ids=True)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0)
    privacy = make_private(model, optimizer, batches, steps=10, task=task, device="cpu")
    seen: dict[str, torch.Tensor] = {}
    accountant_hook = privacy.optimizer.step_hook

    def capture(optimizer: Any) -> None:  # after clip, noise and scaling; before the update
        seen.update({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
        accountant_hook(optimizer)

    privacy.optimizer.attach_step_hook(capture)
    micro = batches.next_step(TrainState())
    assert len(micro) > 1, "the draw should need several micro-batches"
    privacy.accumulate(model, None, micro, accelerator)  # type: ignore[arg-type]
    privacy.optimizer.step()
    drawn = [examples[i] for i in batches.draw(0)]
    return {"grads": seen, "drawn": drawn, "privacy": privacy}


def tiny_lora_classifier(tmp_path: Path) -> Any:
    """LoRA on the BERT classifier, its new head trained in full through peft's modules_to_save."""
    from peft import LoraConfig, TaskType, get_peft_model

    config = LoraConfig(
        task_type=TaskType.SEQ_CLS, r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"]
    )
    return get_peft_model(tiny_classifier(tmp_path), config)


MODELS = {"bert-full-classify": tiny_classifier, "bert-lora-classify": tiny_lora_classifier}


@pytest.mark.parametrize("case", ["bert-full-classify", "bert-lora-classify", "llama-lora-sft"])
def test_one_dp_step_equals_clipping_and_seeded_noise_by_hand(
    case: str, tmp_path: Path, tiny_llama: Path
) -> None:
    task = case.split("-")[-1]
    model = MODELS[case](tmp_path) if task == "classify" else tiny_lora_llama(tiny_llama)
    examples = classify_examples() if task == "classify" else random_labelled_examples(16, seed=4)
    cfg = TrainConfig(**DP_TRAIN, precision="fp32")
    reference_model = copy.deepcopy(model)  # before Opacus' hooks
    got = one_private_step(model, examples, task, cfg)
    privacy = got["privacy"]
    assert privacy.expected_batch == 8 and privacy.sample_rate == 0.5
    # LoRA (and a new linear head) trains Linear layers only: ghost clipping; full fine-tuning does not
    assert privacy.clipping == ("per-example" if "full" in case else "ghost")
    expected = reference_gradient(
        reference_model, got["drawn"], task, cfg, privacy.noise_multiplier, 8, step_seed(3, 0) ^ 0x5EED
    )
    assert set(got["grads"]) == set(expected)
    for name, grad in expected.items():
        # fp32; the reference adds per-example gradients in another order: 1e-6 covers it
        torch.testing.assert_close(got["grads"][name], grad, atol=1e-6, rtol=1e-5, msg=name)
    assert privacy.epsilon() > 0  # the accountant counted the step


def test_dp_run_spends_its_budget_and_reports_it(tmp_path: Path, tiny_llama: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, "sft", train={**DP_TRAIN, "epochs": 2, "save_every": 100})
    result = train(load_recipe(recipe))
    privacy = result.summary.privacy
    assert privacy is not None and privacy["target_epsilon"] == 4.0
    # Calibrated for the run's 4 steps, so it spends (nearly) all of it, never more.
    assert 3.9 < privacy["epsilon"] <= 4.0
    assert privacy["delta"] == pytest.approx(1 / 8)  # 1/N: 8 training conversations
    assert result.summary.metrics["epsilon"] == privacy["epsilon"]
    lines = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    spent = [line["epsilon"] for line in lines if "epsilon" in line]
    assert spent == sorted(spent) and spent[-1] == pytest.approx(privacy["epsilon"])
    report = (result.run_dir / "report.html").read_text()
    assert "epsilon spent / target" in report and f"{privacy['epsilon']:.3f} / 4.0" in report
    from tunelab.runs.registry import list_runs

    (row,) = list_runs(tmp_path / "runs")
    assert row["metrics"]["epsilon"] == privacy["epsilon"]  # the registry has it, for runs compare


def test_dp_resume_equals_uninterrupted(
    tmp_path: Path, tiny_llama: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from safetensors.torch import load_file

    settings = {**DP_TRAIN, "epochs": 3, "save_every": 2}
    whole, split = tmp_path / "whole", tmp_path / "split"
    whole.mkdir(), split.mkdir()
    done = train(load_recipe(make_recipe(whole, tiny_llama, "sft", train=settings)))
    recipe = load_recipe(make_recipe(split, tiny_llama, "sft", train=settings))
    crash_at_checkpoint(monkeypatch, KeyboardInterrupt(), at_step=2)
    with pytest.raises(KeyboardInterrupt):
        train(recipe)
    monkeypatch.undo()
    resumed = train(recipe, resume=only_run_dir(split))
    assert resumed.summary.privacy["epsilon"] == pytest.approx(done.summary.privacy["epsilon"], rel=1e-9)
    expected = load_file(done.run_dir / "final" / "adapter_model.safetensors")
    got = load_file(resumed.run_dir / "final" / "adapter_model.safetensors")
    for key, tensor in expected.items():
        torch.testing.assert_close(got[key], tensor, atol=1e-6, rtol=0, msg=key)


def test_recipe_checks_name_every_dp_conflict_at_once(tmp_path: Path, tiny_llama: Path) -> None:
    recipe = make_recipe(
        tmp_path,
        tiny_llama,
        "sft",
        method={"name": "ia3"},
        train={"privacy": {"target_epsilon": 1}, "packing": True, "gradient_checkpointing": True},
    )
    with pytest.raises(RecipeError) as caught:
        load_recipe(recipe)
    message = str(caught.value)
    for path in ("method.name", "train.packing", "train.gradient_checkpointing"):
        assert path in message
    assert "several examples (people) in one row" in message


def test_a_trainable_batch_norm_is_refused_by_name() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2))
    with pytest.raises(TunelabError) as caught:
        check_private_model(model)
    assert caught.value.problems and caught.value.problems[0].startswith("1 (BatchNorm1d)")


# ---------------------------------------------------------------------------------------------
# train.class_weights (here beside DP: both change what one example's loss counts for)


def test_class_weights_scale_each_examples_loss_by_its_class() -> None:
    from types import SimpleNamespace

    from tunelab.training.objectives import weighted_classification

    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    model = lambda **inputs: SimpleNamespace(logits=logits)  # noqa: E731
    out = weighted_classification([0.75, 1.5])(model, {"input_ids": torch.zeros(3, 1), "labels": labels})
    by_hand = 0.75 * 0.126928 + 1.5 * 0.313262 + 1.5 * 0.693147  # -log softmax of each label
    assert float(out.loss_sum) == pytest.approx(by_hand, abs=1e-5)


def test_auto_class_weights_are_balanced_and_noted_in_the_run(tmp_path: Path, tiny_bert: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_bert, "classify", train={"class_weights": "auto", "max_steps": 2})
    result = train(load_recipe(recipe))
    # LABELED: 3 balance, 3 transfer, 2 card -> n / (classes x count) = 8/9, 8/9, 4/3
    (note,) = [n for n in result.summary.notes if n.startswith("class weights")]
    assert "balance 0.889" in note and "transfer 0.889" in note and "card 1.333" in note


def test_class_weights_are_for_classify_only(tmp_path: Path, tiny_llama: Path) -> None:
    recipe = make_recipe(tmp_path, tiny_llama, "sft", train={"class_weights": "auto"})
    with pytest.raises(RecipeError, match=r"train\.class_weights: applies to task: classify only"):
        load_recipe(recipe)


@pytest.mark.parametrize(
    ("task", "method"), [("classify", "lora"), ("sft", "full")], ids=["bert-lora-classify", "llama-full-sft"]
)
def test_dp_trains_the_other_family_and_method_pairs_in_bf16(
    task: str, method: str, tmp_path: Path, tiny_llama: Path, tiny_bert: Path
) -> None:
    """The one-step test covers BERT in full and Llama with LoRA in fp32; these are the other two pairs,
    under bf16 autocast. Each spends its budget, and what the method trains moves: LoRA's B matrices
    leave their zero start, and in full fine-tuning the final RMSNorm's weight changes (its per-example
    gradient comes from Opacus' functorch path, having no sampler of its own)."""
    from safetensors.torch import load_file

    model = tiny_bert if task == "classify" else tiny_llama
    settings = {**DP_TRAIN, "precision": "bf16", "max_steps": 3, "save_every": 100}
    recipe = make_recipe(tmp_path, model, task, method={"name": method}, train=settings)
    result = train(load_recipe(recipe))
    assert result.summary.status == "completed" and 3.0 < result.summary.privacy["epsilon"] <= 4.0
    final = result.run_dir / "final"
    weights = load_file(next(final.glob("*.safetensors")))
    assert all(torch.isfinite(t.float()).all() for t in weights.values())
    if method == "lora":
        lora_b = [t for k, t in weights.items() if "lora_B" in k]
        assert lora_b and any(t.abs().sum() > 0 for t in lora_b)
    else:
        before = load_file(model / "model.safetensors")["model.norm.weight"]
        assert not torch.equal(weights["model.norm.weight"].float(), before.float())
