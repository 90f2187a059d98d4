"""GGUF bases: a .gguf file as model.name is dequantised once into a cached plain folder, then trains,
restores and generates like any local model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.conftest import make_recipe, save_tiny_llama
from tests.gguf_files import write_llama_gguf
from tunelab.config import ModelConfig, load_recipe
from tunelab.errors import ModelLoadError
from tunelab.hashing import file_sha256
from tunelab.models import gguf
from tunelab.models.load import load_model
from tunelab.models.restore import load_trained
from tunelab.runner import train

TEMPLATE = "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"


@pytest.fixture
def tiny_gguf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Path, Path]:
    """(the GGUF file, the Llama folder it was written from), with a conversion cache of its own."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    gguf._converted.cache_clear()
    hf = save_tiny_llama(tmp_path / "hf", seed=3)
    (tmp_path / "gguf").mkdir()
    return write_llama_gguf(hf, tmp_path / "gguf" / "tiny-llama.gguf", chat_template=TEMPLATE), hf


def _logits(loaded: Any, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return loaded.model(torch.tensor([ids])).logits


def test_a_gguf_base_gives_the_logits_of_the_model_it_was_written_from(tiny_gguf: tuple[Path, Path]) -> None:
    file, hf = tiny_gguf
    from_gguf = load_model(ModelConfig(name=str(file), dtype="float32"), "sft")
    original = load_model(ModelConfig(name=str(hf), dtype="float32"), "sft")
    ids = original.tokenizer("Hello there! How do I check my balance?")["input_ids"]

    assert from_gguf.tokenizer(["Hello there! How do I check my balance?"])["input_ids"][0] == ids
    torch.testing.assert_close(_logits(from_gguf, ids), _logits(original, ids), atol=1e-5, rtol=0)
    assert from_gguf.tokenizer.chat_template == TEMPLATE

    folder = Path(from_gguf.source)
    assert folder.parent == gguf.cache_root() / "gguf"
    assert gguf.source_of(folder) == {
        "gguf": str(file),
        "sha256": file_sha256(file),
        "bytes": file.stat().st_size,
    }
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # a plain checkpoint: it loads without the gguf package
    assert list(folder.parent.glob(".*tmp*")) == []


def test_the_conversion_happens_once_per_file(
    tiny_gguf: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    file, _ = tiny_gguf
    first = gguf.converted_folder(file)
    gguf._converted.cache_clear()  # a new process: only the folder on disk is left
    monkeypatch.setattr(gguf, "_read", lambda path: pytest.fail("converted a second time"))
    assert gguf.converted_folder(file) == first
    # A folder holding the file means the file.
    assert gguf.gguf_file(str(file.parent)) == file


def test_an_interrupted_conversion_leaves_no_folder_that_looks_complete(
    tiny_gguf: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    file, _ = tiny_gguf
    read = gguf._read

    def read_then_fail(path: Path) -> Any:
        model, tokenizer = read(path)
        monkeypatch.setattr(
            tokenizer, "save_pretrained", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full"))
        )
        return model, tokenizer

    monkeypatch.setattr(gguf, "_read", read_then_fail)
    with pytest.raises(OSError, match="disk full"):
        gguf.converted_folder(file)
    assert list((gguf.cache_root() / "gguf").iterdir()) == []  # no folder, no temporary left behind
    monkeypatch.setattr(gguf, "_read", read)
    gguf._converted.cache_clear()
    assert gguf.source_of(gguf.converted_folder(file)) is not None


def test_a_folder_of_several_gguf_files_asks_which(tiny_gguf: tuple[Path, Path]) -> None:
    file, _ = tiny_gguf
    (file.parent / "other.gguf").write_bytes(file.read_bytes())
    with pytest.raises(ModelLoadError, match=r"holds 2 GGUF files \(other.gguf, tiny-llama.gguf\)"):
        gguf.gguf_file(str(file.parent))


def test_a_run_trains_from_a_gguf_base_and_records_where_its_weights_came_from(
    tiny_gguf: tuple[Path, Path], tmp_path: Path
) -> None:
    file, _ = tiny_gguf
    recipe = make_recipe(tmp_path, file, "sft", train={"epochs": 1, "eval_every": 100, "save_every": 100})
    result = train(load_recipe(recipe))
    source = {"gguf": str(file), "sha256": file_sha256(file), "bytes": file.stat().st_size}

    summary = json.loads((result.run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["weights_from"] == source
    final = json.loads((result.run_dir / "final" / "tunelab.json").read_text())
    assert final["base_model"] == str(file) and final["weights_from"] == source
    # The adapter restores over the converted base, found again from the GGUF path.
    trained = load_trained(result.run_dir)
    assert trained.model.peft_config["default"].base_model_name_or_path == summary["model"]
