"""Serving at scale: an exported LoRA adapter loads in vLLM, `vllm serve BASE --enable-lora
--lora-modules NAME=FOLDER`, many adapters over one base on a GPU.

vLLM reads peft's layout (adapter_config.json + adapter_model.safetensors, keys
`base_model.model.<module>.lora_A.weight`) and refuses what its LoRA kernels do not run. These checks
follow vllm/lora/peft_helper.py (PEFTHelper.validate_legal), so `tunelab export` can say before a
deployment, not after, whether vLLM will take the folder and why not.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

# vLLM's --max-lora-rank accepts these values; it must be at least the adapter's rank.
VLLM_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
_LORA_KEY = re.compile(r"^base_model\.model\.(.+)\.lora_(A|B)\.weight$")


def vllm_problems(folder: Path) -> list[str]:
    """Why vLLM would refuse this adapter folder ([] when it loads)."""
    config_path = folder / "adapter_config.json"
    if not config_path.is_file():
        return ["no adapter_config.json: vLLM serves LoRA adapters (export without --merge a lora run)"]
    config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')}: vLLM serves LORA adapters only")
    if config.get("use_dora"):
        problems.append("DoRA: vLLM does not support DoRA adapters (train method lora, or export --merge)")
    if config.get("bias", "none") != "none":
        problems.append(f"bias {config['bias']!r}: vLLM needs bias 'none'")
    if config.get("modules_to_save"):
        problems.append(
            f"modules_to_save {config['modules_to_save']}: vLLM cannot load trained heads or grown embeddings "
            "(a template that added tokens); export --merge instead"
        )
    if int(config.get("r", 0)) > VLLM_RANKS[-1]:
        problems.append(f"rank {config['r']} is above vLLM's largest --max-lora-rank ({VLLM_RANKS[-1]})")
    return problems + _weight_problems(folder)


def _weight_problems(folder: Path) -> list[str]:
    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return ["no adapter_model.safetensors"]
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as handle:
        odd = [key for key in handle.keys() if not _LORA_KEY.match(key)]  # noqa: SIM118 (not a dict)
    return [f"tensors vLLM does not expect: {', '.join(odd[:3])}"] if odd else []


def vllm_command(folder: Path, name: str) -> str:
    """The `vllm serve` line for an adapter folder that vllm_problems passes."""
    config = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    rank = next(r for r in VLLM_RANKS if r >= int(config["r"]))
    base = config.get("base_model_name_or_path") or "BASE"
    return f"vllm serve {base} --enable-lora --lora-modules {name}={folder} --max-lora-rank {rank}"
