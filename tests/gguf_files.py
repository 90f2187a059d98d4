"""Write a Llama folder as a GGUF file, as llama.cpp's converter lays one out, for the GGUF tests.

Not tunelab code: tunelab only reads GGUF files (through transformers). The layout follows
llama.cpp's convert_hf_to_gguf.py for Llama: tensor names from gguf-py's own name map, the rotary
permutation of the q and k projections, a byte-level BPE vocabulary with its merges, and the chat
template in the tokenizer metadata.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k permutation (the inverse of transformers' reverse_permute on reading)."""
    return (
        weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def write_llama_gguf(
    folder: Path, path: Path, chat_template: str | None = None, metadata: dict[str, str] | None = None
) -> Path:
    """The Llama model and tokenizer saved in `folder`, as an unquantised (f32) GGUF file at `path`.

    `metadata`: extra string keys, as llama.cpp's converter writes them from a model card (for example
    general.source.repo_url, general.name)."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((folder / "config.json").read_text())
    writer = gguf.GGUFWriter(str(path), "llama")
    for key, value in (metadata or {}).items():
        writer.add_string(key, value)
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(config["num_attention_heads"])
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_rope_dimension_count(config["hidden_size"] // config["num_attention_heads"])
    writer.add_rope_freq_base(float(config.get("rope_theta") or config["rope_parameters"]["rope_theta"]))
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])
    writer.add_vocab_size(config["vocab_size"])
    _add_tokenizer(writer, folder, chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    for name, weights in load_file(str(folder / "model.safetensors")).items():
        if name.endswith("q_proj.weight"):
            weights = _permute(weights, config["num_attention_heads"])
        elif name.endswith("k_proj.weight"):
            weights = _permute(weights, config["num_key_value_heads"])
        writer.add_tensor(names.get_name(name, try_suffixes=(".weight",)), weights.astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _add_tokenizer(writer, folder: Path, chat_template: str | None) -> None:  # type: ignore[no-untyped-def]
    import gguf

    spec = json.loads((folder / "tokenizer.json").read_text())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    vocab = {token: i for token, i in spec["model"]["vocab"].items()}
    specials = {added["content"]: added["id"] for added in spec["added_tokens"] if added["special"]}
    vocab.update(specials)
    tokens = sorted(vocab, key=vocab.__getitem__)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if token in specials else gguf.TokenType.NORMAL for token in tokens]
    )
    writer.add_token_merges(merges)
    writer.add_bos_token_id(vocab[config["bos_token"]])
    writer.add_eos_token_id(vocab[config["eos_token"]])
    writer.add_pad_token_id(vocab[config["pad_token"]])
    writer.add_unk_token_id(vocab[config["unk_token"]])
    writer.add_add_bos_token(False)
    if chat_template:
        writer.add_chat_template(chat_template)
