"""`tunelab export`: merged, adapter-only and full-weight exports load in plain transformers / peft
and compute what the run's own model computes; the folder carries tokenizer, template, generation
config, label map and a model card; a failed export leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from typer.testing import CliRunner

from tests.conftest import build_tokenizer, make_recipe
from tunelab import export as export_module
from tunelab.cli import app
from tunelab.config import load_recipe
from tunelab.data.templates import CHATML
from tunelab.errors import TunelabError
from tunelab.export import export_run
from tunelab.models.restore import load_trained
from tunelab.runner import train
from tunelab.runs.rundir import read_summary

runner = CliRunner()
CHATML_PROMPT = "<|im_start|>user\nHello there!<|im_end|>\n<|im_start|>assistant\n"
TEXTS = ["Hello there! Good morning.", "Where is my order? It was due on Monday."]


def _train(root: Path, model: Path, task: str, **sections: Any) -> Path:
    root.mkdir()
    return train(load_recipe(make_recipe(root, model, task, **sections))).run_dir


@pytest.fixture(scope="module")
def sft_lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> Path:
    root = tmp_path_factory.mktemp("export-sft-lora") / "run"
    return _train(root, tiny_llama, "sft", train={"max_steps": 2, "eval_every": 2})


@pytest.fixture(scope="module")
def classify_lora_run(tmp_path_factory: pytest.TempPathFactory, tiny_bert: Path) -> Path:
    root = tmp_path_factory.mktemp("export-classify-lora") / "run"
    return _train(root, tiny_bert, "classify", train={"max_steps": 3, "eval_every": 3})


@pytest.fixture(scope="module")
def merged_sft(sft_lora_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_run(sft_lora_run, tmp_path_factory.mktemp("exports") / "merged", merge=True)


def _causal_logits(model: Any, tokenizer: Any) -> torch.Tensor:
    batch = tokenizer(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    return logits[batch["attention_mask"].bool()]  # real positions only


def _class_logits(model: Any, tokenizer: Any) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def test_merged_lora_loads_in_plain_transformers_with_the_run_models_logits(
    sft_lora_run: Path, merged_sft: Path, tiny_llama: Path
) -> None:
    trained = load_trained(sft_lora_run, dtype="float32")  # the LoRA model: base + adapter through peft
    merged = AutoModelForCausalLM.from_pretrained(merged_sft)  # plain transformers, no peft
    assert not hasattr(merged, "peft_config")
    assert (merged_sft / "model.safetensors").is_file() and not (merged_sft / "adapter_config.json").exists()

    expected = _causal_logits(trained.model, trained.tokenizer)
    diff = _max_diff(_causal_logits(merged, trained.tokenizer), expected)
    moved = _max_diff(
        _causal_logits(AutoModelForCausalLM.from_pretrained(tiny_llama), trained.tokenizer), expected
    )
    print(f"merged sft LoRA: max |logit diff| {diff:.2e}; base vs trained {moved:.2e}")
    assert diff < 1e-4
    assert moved > 1e-3  # the adapter changed the model, so a merge that dropped it would fail above
    assert merged.dtype == torch.float32


def test_merged_classifier_keeps_label_names_and_logits(
    classify_lora_run: Path, tmp_path: Path, tiny_bert: Path
) -> None:
    out = export_run(classify_lora_run, tmp_path / "merged", merge=True)
    trained = load_trained(classify_lora_run, dtype="float32")
    merged = AutoModelForSequenceClassification.from_pretrained(out)

    assert merged.config.id2label == {0: "balance", 1: "card", 2: "transfer"}
    assert merged.config.label2id == {"balance": 0, "card": 1, "transfer": 2}
    assert json.loads((out / "labels.json").read_text()) == {"balance": 0, "card": 1, "transfer": 2}
    assert not (out / "generation_config.json").exists()  # a classifier does not generate
    # The card's command runs as written: predict requires --out.
    assert (
        "`tunelab predict FOLDER --data rows.jsonl --out predictions.jsonl`"
        in (out / "README.md").read_text()
    )
    diff = _max_diff(
        _class_logits(merged, trained.tokenizer), _class_logits(trained.model, trained.tokenizer)
    )
    print(f"merged classify LoRA (+ trained head): max |logit diff| {diff:.2e}")
    assert diff < 1e-4


def test_adapter_only_export_loads_with_peft(sft_lora_run: Path, tmp_path: Path, tiny_llama: Path) -> None:
    from peft import PeftModel

    out = export_run(sft_lora_run, tmp_path / "adapter", merge=False)
    names = {p.name for p in out.iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "README.md"} <= names
    assert "model.safetensors" not in names

    reloaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_llama), str(out))
    trained = load_trained(sft_lora_run, dtype="float32")
    diff = _max_diff(
        _causal_logits(reloaded, trained.tokenizer), _causal_logits(trained.model, trained.tokenizer)
    )
    assert diff < 1e-6
    card = _front_matter(out)
    assert card["library_name"] == "peft" and "base_model" not in card  # a local folder has no Hub id


def test_full_run_exports_its_weights(tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path) -> None:
    run = _train(
        tmp_path_factory.mktemp("export-full") / "run", tiny_llama, "sft", method={"name": "full"},
        train={"max_steps": 2, "eval_every": 2},
    )  # fmt: skip
    trained = load_trained(run, dtype="float32")
    expected = _causal_logits(trained.model, trained.tokenizer)
    for merge in (True, False):  # full weights are full weights either way
        out = export_run(run, run.parent / f"out-{merge}", merge=merge)
        assert json.loads((out / "tunelab.json").read_text())["export"]["weights"] == "full"
        model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
        assert _max_diff(_causal_logits(model, trained.tokenizer), expected) == 0  # the same weights
        eos = json.loads((out / "generation_config.json").read_text())["eos_token_id"]
        assert trained.tokenizer.convert_tokens_to_ids("<|im_end|>") in eos


def test_export_carries_template_generation_config_labels_and_model_card(
    sft_lora_run: Path, merged_sft: Path, tiny_llama: Path
) -> None:
    tokenizer = AutoTokenizer.from_pretrained(merged_sft)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hello there!"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == CHATML_PROMPT  # the template used in training, not the base tokenizer's (none)
    # Saved under names transformers 4.x reads too (tests/integration/test_export_transformers4.py).
    saved = json.loads((merged_sft / "tokenizer_config.json").read_text())
    assert saved["tokenizer_class"] == "PreTrainedTokenizerFast" and "extra_special_tokens" not in saved
    assert saved["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
    assert {"<|im_start|>", "<|im_end|>"} <= set(tokenizer.all_special_tokens)  # still special in 5.x

    generation = json.loads((merged_sft / "generation_config.json").read_text())
    eos = generation["eos_token_id"]
    assert isinstance(eos, list) and tokenizer.convert_tokens_to_ids("<|im_end|>") in eos
    assert tokenizer.eos_token_id in eos

    info = json.loads((merged_sft / "tunelab.json").read_text())
    assert info["task"] == "sft" and info["method"] == "lora" and info["chat_template"] == "chatml"
    assert info["export"]["weights"] == "merged"

    front = _front_matter(merged_sft)
    # The Hub reads base_model as a model id: a local folder's path there would be a broken link.
    assert "base_model" not in front and front["library_name"] == "transformers"
    assert {"tunelab", "sft", "lora", "merged"} <= set(front["tags"])
    card = (merged_sft / "README.md").read_text()
    summary = read_summary(sft_lora_run)
    val_loss = summary.metrics["val_loss"]
    zero_shot = summary.baselines["zero_shot"]["val_loss"]
    before = summary.before_training["val_loss"]  # no test split: validation is scored before training too
    assert f"| val_loss | {val_loss:.4f} | {before:.4f} | {zero_shot:.4f} |" in card  # beside its baselines
    assert "| metric | fine-tuned | before training | zero-shot baseline | few-shot baseline |" in card
    assert "| train.lr | 0.01 |" in card and f"| model.name | {tiny_llama} |" in card


def _front_matter(folder: Path) -> dict[str, Any]:
    text = (folder / "README.md").read_text()
    assert text.startswith("---\n")
    return dict(yaml.safe_load(text.split("---\n")[1]))


def test_a_failed_export_leaves_no_folder(
    sft_lora_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_card(*args: Any) -> str:
        raise OSError("disk full")

    monkeypatch.setattr(export_module, "model_card", broken_card)  # the weights are written by then
    with pytest.raises(OSError, match="disk full"):
        export_run(sft_lora_run, tmp_path / "out", merge=True)
    assert list(tmp_path.iterdir()) == []  # neither out nor its temporary folder

    # An existing export replaced with --force survives a failed replacement untouched.
    previous = tmp_path / "previous"
    previous.mkdir()
    (previous / "keep.txt").write_text("old export")
    with pytest.raises(OSError, match="disk full"):
        export_run(sft_lora_run, previous, merge=True, force=True)
    assert [p.name for p in tmp_path.iterdir()] == ["previous"]
    assert (previous / "keep.txt").read_text() == "old export"


def test_out_must_be_new_or_empty_unless_forced(sft_lora_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    export_run(sft_lora_run, out)  # an empty folder is fine
    with pytest.raises(TunelabError, match="already exists and is not empty"):
        export_run(sft_lora_run, out)
    (out / "stale.txt").write_text("from an earlier export")
    export_run(sft_lora_run, out, force=True)
    assert not (out / "stale.txt").exists() and (out / "adapter_config.json").is_file()
    with pytest.raises(TunelabError, match="holds the run being exported"):
        export_run(sft_lora_run, sft_lora_run, force=True)  # --force must never delete the run itself
    assert (sft_lora_run / "final" / "tunelab.json").is_file()


@pytest.mark.parametrize(
    ("name", "kind", "folder"),
    [
        ("model.gguf", "GGUF", "model"),
        ("model.GGUF", "GGUF", "model"),
        ("model.safetensors", "safetensors", "model"),
        ("pytorch_model.bin", "PyTorch .bin", "pytorch_model"),
        ("model.pt", "PyTorch", "model"),
        ("model.onnx", "ONNX", "model"),
        ("model.tar.gz", "gzip", "model"),
    ],
)
def test_an_out_naming_a_file_format_is_refused_before_any_work(
    tmp_path: Path, name: str, kind: str, folder: str
) -> None:
    out = tmp_path / "exports" / name
    # The run does not even exist: the name is refused first, so nothing was read or written.
    with pytest.raises(TunelabError) as refused:
        export_run(tmp_path / "no-such-run", out, merge=True)
    suffix = name[name.rindex(".") :].lower()
    assert str(refused.value).startswith(
        f"--out {out} names a {kind} file, but export writes a folder, not a {suffix} file"
    )
    assert refused.value.fix is not None
    assert refused.value.fix.startswith(f"name a folder, e.g. --out {tmp_path / 'exports' / folder}/ ")
    assert ("tunelab cannot write GGUF yet" in refused.value.fix) == (kind == "GGUF")
    assert list(tmp_path.iterdir()) == []  # no folder, not even the parent


def test_the_export_command_refuses_a_gguf_out_and_a_dotted_folder_name_is_fine(
    sft_lora_run: Path, tmp_path: Path
) -> None:
    result = runner.invoke(
        app, ["export", str(sft_lora_run), "--merge", "--out", str(tmp_path / "model.gguf")]
    )
    assert result.exit_code == 1
    text = " ".join(result.output.split())  # rich wraps long lines
    assert "names a GGUF file, but export writes a folder" in text
    assert (
        "tunelab cannot write GGUF yet: export with --merge, then convert the folder with llama.cpp" in text
    )
    assert list(tmp_path.iterdir()) == []
    # A dot alone promises no format: a version number in a folder name is a folder name.
    assert export_run(sft_lora_run, tmp_path / "support-bot-v1.5").is_dir()


def _fake_final(folder: Path, base: Path, method: str, files: dict[str, str]) -> Path:
    """A final/ folder as a run of `method` would leave it, for methods trained elsewhere."""
    folder.mkdir(parents=True)
    tokenizer = build_tokenizer()
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    info = {"task": "sft", "method": method, "base_model": str(base), "chat_template": "chatml"}
    (folder / "tunelab.json").write_text(json.dumps(info))
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_merge_is_refused_for_prompt_learning_and_bottleneck_adapters(
    tmp_path: Path, tiny_llama: Path
) -> None:
    from peft import PrefixTuningConfig, get_peft_model

    prefix = _fake_final(tmp_path / "prefix" / "final", tiny_llama, "prefix", {})
    config = PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3)
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_llama), config).save_pretrained(prefix)
    with pytest.raises(TunelabError) as refused:
        export_run(prefix, tmp_path / "merged-prefix", merge=True)
    assert "prefix cannot be merged" in str(refused.value) and "adapter-only export works" in str(
        refused.value
    )
    assert "peft at inference" in str(refused.value)
    assert not (tmp_path / "merged-prefix").exists()

    out = export_run(prefix, tmp_path / "prefix-adapter")  # the adapter-only export works
    assert load_trained(out).model.peft_config["default"].peft_type.value == "PREFIX_TUNING"

    bottleneck = _fake_final(
        tmp_path / "bn" / "final", tiny_llama, "adapter", {"bottleneck_adapter.json": "{}"}
    )
    with pytest.raises(TunelabError, match="adapter cannot be merged: a bottleneck adapter adds new layers"):
        export_run(bottleneck, tmp_path / "merged-bn", merge=True)
    assert not (tmp_path / "merged-bn").exists()


def test_export_command(sft_lora_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "cli-out"
    result = runner.invoke(app, ["export", str(sft_lora_run), "--merge", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"exported (merged weights) to {out}" in result.output
    again = runner.invoke(app, ["export", str(sft_lora_run), "--out", str(out)])
    assert again.exit_code == 1 and "already exists and is not empty" in again.output
    missing = runner.invoke(app, ["export", str(tmp_path / "nope"), "--out", str(tmp_path / "x")])
    assert missing.exit_code == 1 and "no such run or model folder" in missing.output


def test_an_export_writes_prompts_as_training_wrote_them(
    tmp_path_factory: pytest.TempPathFactory, tiny_llama: Path
) -> None:
    from tests.conftest import write_jsonl
    from tunelab.inference import as_trained

    root = tmp_path_factory.mktemp("export-prompted") / "run"
    root.mkdir()
    rows = [
        {"dialogue": f"A: {word}\nB: hello", "summary": f"They say {word}."} for word in ("hi", "bye", "ok")
    ]
    template, system = "Summarise the dialogue:\n\n{dialogue}", "One sentence."
    data = {
        "train": str(write_jsonl(root / "dialogues.jsonl", rows)),
        "validation": str(
            write_jsonl(
                root / "dialogues-val.jsonl", [{"dialogue": "C: where is my parcel?", "summary": "C asks."}]
            )
        ),
        "columns": {"completion": "summary"},
        "prompt_template": template,
        "system_prompt": system,
    }
    run = train(load_recipe(make_recipe(root, tiny_llama, "sft", data=data, train={"max_steps": 1}))).run_dir
    out = export_run(run, root / "export")

    card = (out / "README.md").read_text()
    assert f"Training prompts were written as `{template!r}`" in card
    assert f"Every conversation had the system prompt `{system!r}`" in card
    # The card's code, run as a user would, asks exactly the way training asked.
    code = card.split("```python\n")[1].split("```")[0]
    setup = [line for line in code.splitlines() if line.startswith(("PROMPT =", "SYSTEM =", "messages ="))]
    scope: dict[str, Any] = {}
    exec("\n".join(setup), scope)
    assert scope["messages"] == [
        {"role": "system", "content": system},
        {"role": "user", "content": template.format(dialogue="...")},
    ]
    # tunelab's own commands on the export apply the template themselves.
    assert as_trained(load_trained(out), "...") == template.format(dialogue="...")


def test_an_adapter_export_has_the_layout_vllm_loads(sft_lora_run: Path, tmp_path: Path) -> None:
    from safetensors import safe_open

    from tunelab.serving.vllm import vllm_command, vllm_problems

    out = export_run(sft_lora_run, tmp_path / "adapter", merge=False)
    assert vllm_problems(out) == []
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["bias"] == "none" and not config.get("use_dora")
    with safe_open(str(out / "adapter_model.safetensors"), "pt") as handle:
        modules = {key.split(".lora_")[0].rsplit(".", 1)[-1] for key in handle.keys()}  # noqa: SIM118
    # vLLM checks each tensor's module by its last name (q_proj, ...): all LoRA factors of the targets.
    assert modules == {name.rsplit(".", 1)[-1] for name in config["target_modules"]}
    command = vllm_command(out, "mine")
    assert (
        command
        == f"vllm serve {config['base_model_name_or_path']} --enable-lora --lora-modules mine={out} --max-lora-rank 8"
    )
    printed = runner.invoke(app, ["export", str(sft_lora_run), "--out", str(tmp_path / "cli")])
    assert printed.exit_code == 0 and "serve it with vLLM (GPU): vllm serve" in printed.output
    # What vLLM refuses is named before deployment, not discovered after.
    for change, reason in (
        ({"use_dora": True}, "DoRA"),
        ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ):
        (out / "adapter_config.json").write_text(json.dumps({**config, **change}))
        assert any(reason in problem for problem in vllm_problems(out))


def test_model_hub_id_names_a_local_bases_hub_id_in_the_card(tmp_path: Path, tiny_llama: Path) -> None:
    (tmp_path / "run").mkdir()
    section = {"name": str(tiny_llama), "hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct"}
    recipe = make_recipe(tmp_path / "run", tiny_llama, "sft", model=section, train={"max_steps": 1})
    run_dir = train(load_recipe(recipe)).run_dir
    card = _front_matter(export_run(run_dir, tmp_path / "adapter", merge=False))
    assert card["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
