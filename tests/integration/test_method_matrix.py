"""Every adapter method x {tiny Llama sft, tiny BERT classify, tiny BERT token_classify, tiny T5
seq2seq}, table-driven as in peft's own tests:

- exactly the method's weights (and, for classify, the new head) are trainable, and all of them move
  in two optimizer steps of the real loop;
- save -> load onto a freshly loaded base gives the same outputs;
- mergeable methods: merged outputs equal unmerged ones.

qlora and 8-bit bases need CUDA and bitsandbytes: here we check they are refused early and clearly.
"""

from __future__ import annotations

import copy
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator

from tests.conftest import CHATS, LABELED, exact, make_recipe
from tunelab.config import MethodConfig, ModelConfig, TrainConfig, load_recipe
from tunelab.data.records import Chat, Labeled, Message, Tagged
from tunelab.data.seq2seq import collate_seq2seq, tokenize_seq2seq
from tunelab.data.tagged import tokenize_tagged
from tunelab.data.templates import ensure_chat_template
from tunelab.data.tokenize import LengthPolicy, collate, tokenize_chats, tokenize_labeled
from tunelab.errors import ModelLoadError, RecipeError
from tunelab.methods.bottleneck import AdapterMethod
from tunelab.methods.ia3 import Ia3Method
from tunelab.methods.lora import DoraMethod, LoraMethod, QloraMethod
from tunelab.methods.prompt_learning import PrefixMethod, PromptMethod
from tunelab.methods.registry import methods_where
from tunelab.models import load
from tunelab.models.adapters import bottleneck_disabled, is_bottleneck, load_bottleneck, save_bottleneck
from tunelab.models.load import LoadedModel, load_model
from tunelab.models.methods import apply_method, count_parameters
from tunelab.models.peft_compat import load_peft_adapter
from tunelab.tasks.registry import task_spec
from tunelab.training.loop import accumulate_gradients, optimizer_step
from tunelab.training.schedule import build_optimizer, build_scheduler

LABEL_MAP = {"balance": 0, "transfer": 1, "card": 2}
TAG_MAP = {"O": 0, "B-LOC": 1, "B-PER": 2, "I-PER": 3}
LABEL_MAPS = {"sft": None, "classify": LABEL_MAP, "token_classify": TAG_MAP, "seq2seq": None}
SENTENCES = [
    Tagged(("Anna", "Lopez", "lives", "in", "Lisbon"), ("B-PER", "I-PER", "O", "O", "B-LOC")),
    Tagged(("Tom", "moved", "to", "Porto", "yesterday"), ("B-PER", "O", "O", "B-LOC", "O")),
    Tagged(("I", "lost", "my", "card"), ("O", "O", "O", "O")),
]
MAX_SHARE = 0.2  # trainable share bound for adapter methods (tiny models make every adapter look big)

METHODS: dict[str, MethodConfig] = {
    "lora": LoraMethod(name="lora", r=2, alpha=4),
    "dora": DoraMethod(name="dora", r=2, alpha=4),
    "ia3": Ia3Method(name="ia3"),
    "prefix": PrefixMethod(name="prefix", num_virtual_tokens=4),
    "prefix-projection": PrefixMethod(name="prefix", num_virtual_tokens=4, projection=True),
    "prompt": PromptMethod(name="prompt", num_virtual_tokens=4),
    "prompt-init-text": PromptMethod(name="prompt", num_virtual_tokens=4, init_text="Answer briefly."),
    "adapter": AdapterMethod(name="adapter", reduction_factor=4),
}
# Name fragments of each method's own weights.
OWN_WEIGHTS = {
    "lora": ("lora_A.", "lora_B."),
    "dora": ("lora_A.", "lora_B.", "lora_magnitude_vector."),
    "ia3": ("ia3_l.",),
    "prefix": ("prompt_encoder.",),
    "prompt": ("prompt_encoder.",),
    "adapter": (".bottleneck_adapter.",),
}


@dataclass(frozen=True)
class Case:
    method: str  # a key of METHODS
    task: str  # sft: tiny Llama; classify and token_classify: tiny BERT (its head is new); seq2seq: tiny T5

    @property
    def cfg(self) -> Any:  # one of the method classes; each has its own `name` literal
        return METHODS[self.method]

    @property
    def name(self) -> str:
        return str(self.cfg.name)

    def is_intended(self, param_name: str, new_modules: list[str]) -> bool:
        """Whether the method should train this parameter."""
        if any(fragment in param_name for fragment in OWN_WEIGHTS[self.name]):
            return True
        return any(self.trained_in_full(module) in param_name for module in new_modules)

    def trained_in_full(self, module: str) -> str:
        """The name fragment of a new module's weights trained in full (not adapted: they are random).
        peft trains a copy in modules_to_save beside the original; the bottleneck adapter trains it in place."""
        return f"{module}." if self.name == "adapter" else f"{module}.modules_to_save."


CASES = [
    Case(method, task) for method in METHODS for task in ("sft", "classify", "token_classify", "seq2seq")
]


def case_id(case: Case) -> str:
    return f"{case.method}-{case.task}"


def training_cases() -> list[Any]:
    return [pytest.param(c, id=case_id(c)) for c in CASES]


# ---------------------------------------------------------------------------------------------
# fixtures and helpers


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Any:
    """Tiny models gain nothing from threads; on a busy machine OpenMP's spinning threads cost seconds a step."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def folders(tiny_llama: Path, tiny_bert: Path, tiny_t5: Path) -> dict[str, Path]:
    return {"sft": tiny_llama, "classify": tiny_bert, "token_classify": tiny_bert, "seq2seq": tiny_t5}


@pytest.fixture(scope="module")
def bases(folders: dict[str, Path]) -> dict[str, LoadedModel]:
    """One loaded base per task; each test attaches its method to a deep copy."""
    return {
        task: load_model(ModelConfig(name=str(folder)), task, LABEL_MAPS[task])
        for task, folder in folders.items()
    }


@pytest.fixture(scope="module")
def batches(bases: dict[str, LoadedModel]) -> dict[str, dict[str, torch.Tensor]]:
    policy = LengthPolicy(max_seq_len=48)
    chat_tokenizer = copy.deepcopy(bases["sft"].tokenizer)
    ensure_chat_template(chat_tokenizer)
    chats = [Chat(tuple(Message(m["role"], m["content"]) for m in row["messages"])) for row in CHATS[:3]]
    sft_examples, _ = tokenize_chats(chat_tokenizer, chats, policy)
    labeled = [Labeled(row["text"], row["label"]) for row in LABELED[:4]]
    classify_examples, _ = tokenize_labeled(bases["classify"].tokenizer, labeled, LABEL_MAP, policy)
    tagged_examples, _ = tokenize_tagged(bases["token_classify"].tokenizer, SENTENCES, TAG_MAP, policy)
    t5 = bases["seq2seq"]
    one_exchange = [chat for chat in chats if len(chat.messages) <= 3]
    seq2seq_examples, _ = tokenize_seq2seq(t5.tokenizer, one_exchange, policy)
    seq2seq = collate_seq2seq(seq2seq_examples, t5.tokenizer.pad_token_id)
    # For `logits` only (the objective shifts the labels itself; "_" keys are not model inputs).
    seq2seq["_decoder_input_ids"] = t5.model.prepare_decoder_input_ids_from_labels(labels=seq2seq["labels"])
    return {
        "seq2seq": seq2seq,
        "token_classify": collate(tagged_examples, bases["token_classify"].tokenizer.pad_token_id),
        "sft": collate(sft_examples, bases["sft"].tokenizer.pad_token_id),
        "classify": collate(classify_examples, bases["classify"].tokenizer.pad_token_id),
    }


def build(case: Case, bases: dict[str, LoadedModel]) -> Any:
    torch.manual_seed(0)
    base = bases[case.task]
    return apply_method(copy.deepcopy(base.model), case.cfg, case.task, base.new_modules)


def train_two_steps(model: Any, task: str, batch: dict[str, torch.Tensor]) -> None:
    cfg = TrainConfig(lr=1e-2, weight_decay=0.0)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg, total_steps=2)
    accelerator = Accelerator(cpu=True)
    model.train()
    # Two steps: a zero-initialised factor (LoRA's B, the adapter's up) leaves the other one's gradient
    # zero on the first step.
    for _ in range(2):
        objective = task_spec(task).objective(None, model, None)  # these tasks' losses take no settings
        accumulate_gradients(model, objective, [batch], accelerator)
        optimizer_step(model, optimizer, scheduler, cfg, accelerator)


def assert_trains_exactly_the_intended(model: Any, case: Case, new_modules: list[str]) -> None:
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    intended = {name for name, _ in model.named_parameters() if case.is_intended(name, new_modules)}
    assert trainable == intended
    for fragment in OWN_WEIGHTS[case.name]:  # each kind of the method's weights (DoRA: magnitudes too)
        assert any(fragment in name for name in trainable), f"no {fragment} weight trains"
    for module in new_modules:
        full = case.trained_in_full(module)
        assert any(full in name for name in trainable), f"the new module {module} must train in full"


@torch.no_grad()
def perturb_trainable(model: Any) -> None:
    """Move every trained weight off its initial value, so round trips and merges are not trivially equal."""
    generator = torch.Generator().manual_seed(1)
    for param in model.parameters():
        if param.requires_grad:
            param.add_(0.1 * torch.randn(param.shape, generator=generator, dtype=param.dtype))


@torch.no_grad()
def logits(model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels" and not k.startswith("_")}
    if "_decoder_input_ids" in batch:  # an encoder-decoder: its logits are the decoder's
        inputs["decoder_input_ids"] = batch["_decoder_input_ids"]
    return model(**inputs).logits


# ---------------------------------------------------------------------------------------------
# the matrix


@exact
@pytest.mark.parametrize("case", training_cases())
def test_exactly_the_method_weights_train_and_all_of_them_move(
    case: Case, bases: dict[str, LoadedModel], batches: dict[str, dict[str, torch.Tensor]]
) -> None:
    model = build(case, bases)
    assert_trains_exactly_the_intended(model, case, bases[case.task].new_modules)

    n_trainable, n_total = count_parameters(model)
    share = n_trainable / n_total
    print(f"{case_id(case)}: {n_trainable:,} trainable / {n_total:,} ({100 * share:.2f}%)")
    assert 0 < share < MAX_SHARE

    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    train_two_steps(model, case.task, batches[case.task])
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed == trainable


@exact
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_save_then_load_onto_a_fresh_base_gives_the_same_outputs(
    case: Case,
    bases: dict[str, LoadedModel],
    batches: dict[str, dict[str, torch.Tensor]],
    folders: dict[str, Path],
    tmp_path: Path,
) -> None:
    model = build(case, bases)
    perturb_trainable(model)
    expected = logits(model, batches[case.task])

    # A freshly loaded base: for classify its head is a new random one, which the saved head must replace.
    fresh = load_model(ModelConfig(name=str(folders[case.task])), case.task, LABEL_MAPS[case.task]).model
    if is_bottleneck(model):
        save_bottleneck(model, tmp_path)
        assert {p.name for p in tmp_path.iterdir()} == {
            "bottleneck_adapter.json",
            "bottleneck_adapter.safetensors",
        }
        loaded = load_bottleneck(fresh, tmp_path)
    else:
        model.save_pretrained(str(tmp_path))
        loaded = load_peft_adapter(fresh, tmp_path)

    torch.testing.assert_close(logits(loaded, batches[case.task]), expected, rtol=0, atol=1e-6)
    if is_bottleneck(loaded):
        assert not any(p.requires_grad for p in loaded.parameters())  # loaded for inference, as peft does


@exact
@pytest.mark.parametrize("case", [c for c in CASES if c.name in methods_where("mergeable")], ids=case_id)
def test_merged_outputs_equal_unmerged_outputs(
    case: Case, bases: dict[str, LoadedModel], batches: dict[str, dict[str, torch.Tensor]]
) -> None:
    model = build(case, bases)
    perturb_trainable(model)
    unmerged = logits(model, batches[case.task])
    merged_model = model.merge_and_unload()
    assert not any(f in n for n, _ in merged_model.named_parameters() for f in OWN_WEIGHTS[case.name])
    merged = logits(merged_model, batches[case.task])
    print(f"{case_id(case)}: max |merged - unmerged| = {(merged - unmerged).abs().max().item():.2e}")
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# bottleneck adapter specifics, and what cannot work


@pytest.fixture(scope="module")
def bert_without_pooler(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint that lacks the pooler too (as MLM-only checkpoints do): a new module that peft does
    not know by name, unlike "classifier", so only the builder's modules_to_save makes it train."""
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("bert-without-pooler")
    shutil.copytree(tiny_bert, folder, dirs_exist_ok=True)
    weights = load_file(str(folder / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if "pooler" not in k}, str(folder / "model.safetensors"))
    return folder


@pytest.mark.parametrize("case", [c for c in CASES if c.task == "classify"], ids=case_id)
def test_every_new_module_trains_in_full_whatever_its_name(case: Case, bert_without_pooler: Path) -> None:
    loaded = load_model(ModelConfig(name=str(bert_without_pooler)), "classify", LABEL_MAP)
    assert loaded.new_modules == ["bert.pooler.dense", "classifier"]
    model = apply_method(loaded.model, case.cfg, "classify", loaded.new_modules)
    assert_trains_exactly_the_intended(model, case, loaded.new_modules)


def test_bottleneck_adapters_start_equal_to_the_base_and_sit_after_the_output_projections(
    bases: dict[str, LoadedModel], batches: dict[str, dict[str, torch.Tensor]]
) -> None:
    for task, expected in {
        "sft": ["self_attn.o_proj", "mlp.down_proj"],
        "classify": ["attention.output.dense", "output.dense"],
    }.items():
        base = bases[task].model
        model = apply_method(copy.deepcopy(base), METHODS["adapter"], task, bases[task].new_modules)
        targets = model.bottleneck_settings.targets
        assert len(targets) == 4  # two sub-layers in each of two blocks
        assert all(t.endswith(f".0.{e}") for t, e in zip(targets[:2], expected, strict=True)), targets
        torch.testing.assert_close(logits(model, batches[task]), logits(base, batches[task]), rtol=0, atol=0)


def test_bottleneck_disabled_gives_the_base_outputs(
    bases: dict[str, LoadedModel], batches: dict[str, dict[str, torch.Tensor]]
) -> None:
    model = build(Case("adapter", "sft"), bases)
    perturb_trainable(model)
    assert not torch.equal(logits(model, batches["sft"]), logits(bases["sft"].model, batches["sft"]))
    with bottleneck_disabled(model):
        torch.testing.assert_close(logits(model, batches["sft"]), logits(bases["sft"].model, batches["sft"]))


def test_prompt_init_text_starts_from_the_text_embeddings(bases: dict[str, LoadedModel]) -> None:
    model = build(Case("prompt-init-text", "sft"), bases)
    ids = bases["sft"].tokenizer("Answer briefly.")["input_ids"]
    ids = (ids * 4)[:4]  # peft repeats or cuts the text to num_virtual_tokens
    expected = bases["sft"].model.get_input_embeddings().weight[ids]
    torch.testing.assert_close(model.prompt_encoder["default"].embedding.weight, expected)


def test_loading_a_bottleneck_adapter_is_strict(
    bases: dict[str, LoadedModel], tmp_path: Path, folders: dict[str, Path]
) -> None:
    from safetensors.torch import load_file, save_file

    model = build(Case("adapter", "classify"), bases)
    save_bottleneck(model, tmp_path)
    weights = load_file(str(tmp_path / "bottleneck_adapter.safetensors"))
    weights.pop(next(k for k in weights if k.startswith("classifier.")))
    save_file(weights, str(tmp_path / "bottleneck_adapter.safetensors"))
    fresh = load_model(ModelConfig(name=str(folders["classify"])), "classify", LABEL_MAP).model
    with pytest.raises(ModelLoadError, match="does not match the adapters: missing"):
        load_bottleneck(fresh, tmp_path)


def test_prompt_tuning_refuses_a_decoder_classifier(tiny_llama: Path) -> None:
    # Llama classifies from the last non-padding token, found from input_ids, which a soft prompt replaces.
    loaded = load_model(ModelConfig(name=str(tiny_llama)), "classify", LABEL_MAP)
    with pytest.raises(RecipeError, match=r"method prompt: .* last non-padding token"):
        apply_method(loaded.model, METHODS["prompt"], "classify", loaded.new_modules)


def test_qlora_refuses_a_base_that_is_not_4bit(bases: dict[str, LoadedModel]) -> None:
    with pytest.raises(RecipeError, match=r"method qlora: the base model was not loaded in 4-bit"):
        apply_method(copy.deepcopy(bases["sft"].model), QloraMethod(name="qlora"), "sft", [])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
@pytest.mark.parametrize(
    "sections",
    [{"method": {"name": "qlora"}}, {"model": {"load_in_8bit": True}}],
    ids=["qlora", "load_in_8bit"],
)
def test_quantised_bases_are_refused_before_any_work_without_cuda(
    sections: dict[str, Any], tmp_path: Path, tiny_llama: Path
) -> None:
    from typer.testing import CliRunner

    from tunelab.cli import app

    # The recipe is valid (it would run on a GPU machine); this machine's pre-flight refuses it.
    path = make_recipe(tmp_path, tiny_llama, "sft", **sections)
    load_recipe(path)
    for command in (["validate", str(path), "--host"], ["train", str(path)]):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 1, result.output
        assert "1 problem on this machine" in result.output and "needs a CUDA GPU" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    ("quantisation", "task"), [("4bit", "sft"), ("8bit", "classify")], ids=["4bit-sft", "8bit-classify"]
)
def test_quantised_loading_options(quantisation: Any, task: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What load_model hands from_pretrained (bitsandbytes itself needs CUDA, so it is not run here)."""
    monkeypatch.setattr(load, "bitsandbytes_installed", lambda: True)
    options = load.quantisation_options(quantisation, task)
    config = options["quantization_config"]
    if quantisation == "4bit":
        assert config.load_in_4bit and config.bnb_4bit_use_double_quant
        assert config.bnb_4bit_quant_type == "nf4"
        assert config.bnb_4bit_compute_dtype in (torch.bfloat16, torch.float16)
        assert config.llm_int8_skip_modules is None  # a causal LM keeps transformers' defaults (lm_head)
    else:
        assert config.load_in_8bit and not config.load_in_4bit
        assert "classifier" in config.llm_int8_skip_modules  # the new head stays out of bitsandbytes
    assert load.quantisation_for("qlora", False) == "4bit"
    assert load.quantisation_for("lora", True) == "8bit"
    assert load.quantisation_for("lora", False) is None
