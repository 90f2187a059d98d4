"""An export of a run on a GGUF base loads in transformers 4.x (what vLLM and llama.cpp's converter often
run on) as in 5.x, the installed version: the same tokenizer, the same RoPE, the same greedy answer.
Its model card names the base by its Hub id, never by a local path.

The 4.x side runs in .venv-tf4 (`make tf4`); those tests skip without it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from transformers import AutoTokenizer

from tests.conftest import build_tokenizer, make_recipe, save_tiny_llama
from tests.gguf_files import write_llama_gguf
from tunelab.config import load_recipe
from tunelab.data.templates import CHATML
from tunelab.export import export_run
from tunelab.models import gguf
from tunelab.runner import train

REPO = Path(__file__).resolve().parents[2]
TF4 = REPO / ".venv-tf4"
HUB_ID = "tunelab-tests/tiny-llama"
# SmolLM2's. transformers 4.x reads RoPE's base from config.json's rope_theta, which 5.x no longer writes;
# without it 4.x silently uses 10000, a different model (on SmolLM2 itself: a different answer).
ROPE_THETA = 100000.0
TEXTS = ["Hello there! <|im_end|>", "<s>Where is my order?</s> <pad> Good morning."]
MESSAGES = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Where is my order?"},
]

# Run by .venv-tf4's Python and by this one: the tokenizer's encodings, and with a model the logits of
# the prompt's last position and the greedy answer; or a config's RoPE settings as that version reads them.
PROBE = r"""
import json, sys
import torch, transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

folder, what, texts, messages = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
result = {"major": int(transformers.__version__.split(".")[0])}
if what == "config":
    config = AutoConfig.from_pretrained(folder)
    # 5.x keeps RoPE in rope_parameters; 4.x in rope_theta and rope_scaling (its rope_parameters is unread).
    result["rope"] = dict(config.rope_parameters) if result["major"] >= 5 else {
        "rope_theta": config.rope_theta, **(config.rope_scaling or {})}
else:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    result["ids"] = [tokenizer(text)["input_ids"] for text in texts]
    result["special"] = sorted(tokenizer.all_special_tokens)
    result["eos"], result["pad"] = tokenizer.eos_token, tokenizer.pad_token
if what == "model":
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True,
                                           return_tensors="pt")
    result["inputs"], result["prompt"] = sorted(prompt), prompt["input_ids"][0].tolist()
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    with torch.no_grad():
        result["logits"] = model(**prompt).logits[0, -1].tolist()
        answer = model.generate(**prompt, max_new_tokens=12, do_sample=False)
    result["answer"] = answer[0, prompt["input_ids"].shape[1]:].tolist()
print(json.dumps(result))
"""


def _probe(python: str, folder: Path, what: str) -> dict[str, Any]:
    args = [python, "-c", PROBE, str(folder), what, json.dumps(TEXTS), json.dumps(MESSAGES)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=240, cwd=folder.parent)
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


@pytest.fixture
def transformers4() -> str:
    if not (TF4 / ".installed").is_file():
        pytest.skip("no transformers 4.x: `make tf4` installs it into .venv-tf4")
    return str(TF4 / "bin" / "python")


def _tiny_gguf(folder: Path, metadata: dict[str, str] | None = None) -> Path:
    hf = save_tiny_llama(folder / "hf", seed=5)
    config = json.loads((hf / "config.json").read_text())
    config["rope_parameters"]["rope_theta"] = ROPE_THETA
    (hf / "config.json").write_text(json.dumps(config))
    (folder / "gguf").mkdir()
    return write_llama_gguf(hf, folder / "gguf" / "tiny-llama.gguf", chat_template=CHATML, metadata=metadata)


@pytest.fixture(scope="module")
def gguf_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A LoRA run on a GGUF base whose metadata names its Hub repository, and its exports."""
    root = tmp_path_factory.mktemp("export-tf4")
    file = _tiny_gguf(root, {"general.source.repo_url": f"https://huggingface.co/{HUB_ID}"})
    run = train(load_recipe(make_recipe(root, file, "sft", train={"max_steps": 3, "eval_every": 3}))).run_dir
    return {
        "gguf": file,
        "run": run,
        "merged": export_run(run, root / "merged", merge=True),
        "adapter": export_run(run, root / "adapter"),
        "base": Path(json.loads((run / "summary.json").read_text())["model"]),  # the converted GGUF
    }


def _front_matter(folder: Path) -> dict[str, Any]:
    return dict(yaml.safe_load((folder / "README.md").read_text().split("---\n")[1]))


def _encodings(tokenizer: Any) -> dict[str, Any]:
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, return_dict=True)
    return {
        "ids": [tokenizer(text)["input_ids"] for text in TEXTS],
        "special": sorted(tokenizer.all_special_tokens),
        "eos": tokenizer.eos_token,
        "pad": tokenizer.pad_token,
        "prompt": prompt["input_ids"],
        "inputs": sorted(prompt),
    }


def test_every_folder_others_load_names_a_tokenizer_class_and_rope_transformers4_reads(
    gguf_run: dict[str, Path],
) -> None:
    for name in ("merged", "adapter", "base"):  # and final/, which the adapter export copies
        config = json.loads((gguf_run[name] / "tokenizer_config.json").read_text())
        # Not TokenizersBackend, which 4.x does not have ("does not exist or is not currently imported").
        assert config["tokenizer_class"] == "PreTrainedTokenizerFast", name
        assert config["model_input_names"] == ["input_ids", "attention_mask"], name  # 4.x's default adds
        # token_type_ids, which generate() refuses
    assert json.loads((gguf_run["run"] / "final" / "tokenizer_config.json").read_text())[
        "tokenizer_class"
    ] == ("PreTrainedTokenizerFast")
    for name in ("merged", "base"):
        config = json.loads((gguf_run[name] / "config.json").read_text())
        assert config["rope_theta"] == config["rope_parameters"]["rope_theta"] == ROPE_THETA, name
        assert "rope_scaling" not in config  # plain RoPE: 4.x's default (None) is right

    # 5.x reads the renamed class as the very tokenizer the GGUF file holds: same ids, tokens, template.
    file = gguf_run["gguf"]
    original = AutoTokenizer.from_pretrained(file.parent, gguf_file=file.name)
    exported = AutoTokenizer.from_pretrained(gguf_run["merged"])
    assert _encodings(exported) == _encodings(original)
    assert _encodings(exported)["inputs"] == ["attention_mask", "input_ids"]


def test_the_model_card_names_the_base_by_its_hub_id(gguf_run: dict[str, Path]) -> None:
    for name in ("merged", "adapter"):
        assert _front_matter(gguf_run[name])["base_model"] == HUB_ID  # from the GGUF file's metadata
    info = json.loads((gguf_run["run"] / "final" / "tunelab.json").read_text())
    assert info["base_hub_id"] == HUB_ID and info["base_model"] == str(gguf_run["gguf"])
    # The adapter's usage code loads the GGUF file it was trained on, as transformers reads one: it runs.
    card = (gguf_run["adapter"] / "README.md").read_text()
    code = card.split("```python\n", 1)[1].split("```", 1)[0].replace("FOLDER", str(gguf_run["adapter"]))
    file = gguf_run["gguf"]
    assert f'from_pretrained("{file.parent}", gguf_file="{file.name}")' in code
    scope: dict[str, Any] = {}
    exec(code.replace("max_new_tokens=128", "max_new_tokens=3"), scope)
    assert scope["model"].peft_config["default"].peft_type.value == "LORA"


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"general.source.huggingface.repository": "org/model"}, "org/model"),  # older gguf-py's key
        ({"general.source.repo_url": "https://huggingface.co/org/model"}, "org/model"),
        ({"general.source.url": "https://huggingface.co/org/model/tree/main"}, "org/model"),
        ({"general.name": "org/model"}, "org/model"),  # convert_hf_to_gguf.py --remote org/model
        ({"general.name": "Smollm2 135M 8k Lc100K Mix1 Ep2"}, None),  # a title, as in SmolLM2's file
        ({"general.source.url": "https://arxiv.org/abs/2502.02737"}, None),
        ({"general.source.url": "https://huggingface.co/datasets/org/data"}, None),
        ({"general.source.url": "https://huggingface.co/papers/2502.02737"}, None),
        # The model the file's model was made from (an instruct model's base), not the file's own.
        (
            {
                "general.base_model.count": "1",
                "general.base_model.0.repo_url": "https://huggingface.co/org/b",
            },
            None,
        ),
        ({}, None),
    ],
)
def test_the_hub_id_comes_from_the_gguf_files_own_source_only(
    tmp_path: Path, metadata: dict[str, str], expected: str | None
) -> None:
    assert gguf.hub_id(_tiny_gguf(tmp_path, metadata)) == expected


@pytest.mark.slow
def test_transformers4_loads_the_merged_export_and_answers_as_transformers5_does(
    gguf_run: dict[str, Path], transformers4: str
) -> None:
    old = _probe(transformers4, gguf_run["merged"], "model")
    new = _probe(sys.executable, gguf_run["merged"], "model")
    assert (old.pop("major"), new.pop("major")) == (4, 5)
    old_logits, new_logits = old.pop("logits"), new.pop("logits")
    assert old == new  # tokenizer ids, special tokens, the prompt's ids, and the greedy answer
    assert len(new["answer"]) > 0 and new["inputs"] == ["attention_mask", "input_ids"]
    diff = max(abs(a - b) for a, b in zip(old_logits, new_logits, strict=True))
    print(f"transformers 4 vs 5: greedy answer {new['answer']}; max |logit diff| {diff:.2e}")
    assert diff < 1e-5  # read with 4.x's default rope_theta (10000) instead, they move by 3e-4 here

    # The base the adapter export names (the converted GGUF) loads there too.
    assert _probe(transformers4, gguf_run["base"], "tokenizer")["ids"] == new["ids"]


@pytest.mark.slow
def test_transformers4_reads_extra_special_tokens_and_scaled_rope_as_written_by_5(
    tmp_path: Path, transformers4: str
) -> None:
    from transformers import LlamaConfig

    from tunelab.models.portable import make_portable

    # A tokenizer with extra special tokens: 5.x saves them as a list that 4.x fails to load.
    build_tokenizer().save_pretrained(tmp_path / "tokenizer")
    make_portable(tmp_path / "tokenizer")
    saved = json.loads((tmp_path / "tokenizer" / "tokenizer_config.json").read_text())
    assert "extra_special_tokens" not in saved
    assert saved["additional_special_tokens"] == ["<|im_start|>", "<|im_end|>"]
    old, new = (
        _probe(python, tmp_path / "tokenizer", "tokenizer") for python in (transformers4, sys.executable)
    )
    assert {**old, "major": 0} == {**new, "major": 0}
    assert {"<|im_start|>", "<|im_end|>"} <= set(new["special"])

    # Llama 3's scaled RoPE: 4.x reads it from rope_scaling.
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 64}  # fmt: skip
    LlamaConfig(hidden_size=32, num_attention_heads=4, rope_parameters=rope).save_pretrained(
        tmp_path / "config"
    )
    make_portable(tmp_path / "config")
    old, new = (_probe(python, tmp_path / "config", "config") for python in (transformers4, sys.executable))
    assert old["rope"] == new["rope"] == rope
