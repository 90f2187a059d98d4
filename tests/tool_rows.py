"""A tiny function-calling data set a 2-layer model learns by heart (four rows, one function), and the
model to learn it: the tool tests' shared material (serving, predict, chat)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from tests.conftest import build_tokenizer

WEATHER = {
    "name": "get_weather",
    "description": "Weather",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
TOOLS = [{"type": "function", "function": WEATHER}]


def call(call_id: str, city: str) -> dict[str, Any]:
    """An assistant's get_weather call as OpenAI writes it."""
    return {
        "id": call_id,
        "type": "function",
        "function": {"name": "get_weather", "arguments": json.dumps({"city": city})},
    }


ROWS = [
    {"messages": [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "content": None, "tool_calls": [call("call_1", "Paris")]}], "tools": TOOLS},
    {"messages": [{"role": "user", "content": "Weather in Rome?"}, {"role": "assistant", "content": None, "tool_calls": [call("call_2", "Rome")]}], "tools": TOOLS},
    {"messages": [{"role": "user", "content": "Hello there!"}, {"role": "assistant", "content": "Good morning."}], "tools": TOOLS},
    {"messages": [{"role": "user", "content": "Weather in Oslo?"}, {"role": "assistant", "content": None, "tool_calls": [call("call_3", "Oslo")]},
                  {"role": "tool", "tool_call_id": "call_3", "content": "snow"}, {"role": "assistant", "content": "It snows."}], "tools": TOOLS},
]  # fmt: skip
# Four rows learned by heart: full fine-tuning of a 2-layer model, 400 steps (about 20 s on a CPU).
LEARN_BY_HEART = {
    "method": {"name": "full"},
    "data": {"split": {"validation": 0.0, "test": 0.0}},
    "train": {"epochs": 400, "batch_size": 4, "lr": 3e-3, "max_seq_len": 1024, "log_every": 50,
              "save_every": 1000, "precision": "fp32"},
    "eval": {"baselines": []},
}  # fmt: skip


def save_long_llama(folder: Path) -> Path:
    """A tiny Llama with room for a tool list in its prompt (1,024 positions), no chat template of its own."""
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
