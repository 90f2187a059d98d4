"""SFT speed bench: `tunelab train` against TRL's SFTTrainer on CodeAlpaca, same model, data and settings.

    .venv/bin/python bench/sft.py trl  --work DIR --packing {on,off} --out result.json
    .venv/bin/python bench/sft.py eval --work DIR --model FOLDER --out result.json

bench/bench.py drives this: it builds the tiny Llama once (bench/dpo_hh.py's `tiny_llama`, fixed
seed), writes the data, runs `tunelab train` on a generated recipe, then TRL on *the rows tunelab
trained on* (its run folder's data/train.jsonl and data/validation.jsonl: same cleaning, same rows).

Which TRL option puts the loss on the same tokens as tunelab: a conversational prompt-completion
dataset (prompt = the user turn, completion = the assistant turn) with `completion_only_loss=True`.
TRL then renders the prompt with the generation prompt and masks its tokens; what is left is the
answer and its `<|im_end|>` marker, which is exactly tunelab's assistant span. `assistant_only_loss`
would need `{% generation %}` markers in the template, i.e. a different template than tunelab's
chatml. The `trl` command checks the claim token by token against tunelab's own tokenisation and
records the result (`loss_tokens_identical`).
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

CODEALPACA = SHARED / "codealpaca" / "code_alpaca_2k.jsonl"
SEED = 0
MAX_LEN = 256
BATCH = 8
LR = 5e-4
LOG_EVERY = 1  # every step, in both: the final train loss averages the same last steps (common.py)


# ---------------------------------------------------------------------------------------------
# inputs, shared by every run


def write_inputs(work: Path, n_train: int, n_eval: int) -> dict[str, Any]:
    """The tiny Llama (saved once, so every run starts from the same weights) and the two data files.

    The files keep CodeAlpaca's own alpaca layout; tunelab's alpaca reader makes the user turn
    `instruction + "\\n\\n" + input` (input only when non-empty) and the assistant turn `output`.
    """
    from dpo_hh import tiny_llama

    lines = CODEALPACA.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= n_train + n_eval, f"{CODEALPACA} has {len(lines)} rows"
    (work / "sft_train.jsonl").write_text("\n".join(lines[:n_train]) + "\n", encoding="utf-8")
    (work / "sft_eval.jsonl").write_text(
        "\n".join(lines[n_train : n_train + n_eval]) + "\n", encoding="utf-8"
    )
    model = tiny_llama(work / "tiny-llama", seed=SEED)
    return {"model": str(model), "train": str(work / "sft_train.jsonl"), "eval": str(work / "sft_eval.jsonl")}


def tunelab_recipe(inputs: dict[str, Any], runs_dir: Path, packing: bool) -> dict[str, Any]:
    """The recipe: every hyper-parameter the comparison depends on is spelled out, none left to defaults."""
    return {
        "name": f"bench-sft-pack-{'on' if packing else 'off'}",
        "task": "sft",
        "model": {"name": inputs["model"]},
        "data": {
            "train": inputs["train"],
            "validation": inputs["eval"],
            "format": "alpaca",
            "template": "chatml",
            # Row 238 of CodeAlpaca has an empty output: tunelab refuses it by default; skip leaves it
            # out and counts it in the run's report. TRL is given the rows tunelab kept, so both train
            # on the same 399.
            "on_error": "skip",
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
            "packing": packing,
            "log_every": LOG_EVERY,
            # evaluation and the checkpoint happen once, after the last step: outside the timed loop
            "eval_every": 1_000_000,
            "save_every": 1_000_000,
            "keep_last": 1,
            "seed": SEED,
        },
        "eval": {"baselines": []},  # baselines score the base model before training: not what is timed
        "output": {"dir": str(runs_dir)},
    }


# ---------------------------------------------------------------------------------------------
# tokenisation shared by the checks and the neutral evaluation


def chat_rows(path: Path) -> list[list[dict[str, str]]]:
    """Conversations from a tunelab run folder's canonical JSONL (data/train.jsonl, ...)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [[{"role": m["role"], "content": m["content"]} for m in row["messages"]] for row in rows]


def chat_tokenizer(model_dir: str) -> Any:
    from transformers import AutoTokenizer

    from tunelab.data.templates import CHATML

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = CHATML  # the recipe's `template: chatml`
    return tokenizer


def encode(tokenizer: Any, messages: list[dict[str, str]]) -> dict[str, list[int]]:
    """Prompt-completion encoding, TRL's way: loss on the tokens after the rendered prompt."""
    prompt = tokenizer.apply_chat_template(
        messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert full[: len(prompt)] == prompt, "prompt does not tokenise as a prefix of the conversation"
    labels = [-100] * len(prompt) + full[len(prompt) :]
    return {"input_ids": full[:MAX_LEN], "labels": labels[:MAX_LEN]}


def eval_loss(model: Any, examples: list[dict[str, list[int]]], batch_size: int = BATCH) -> dict[str, float]:
    """Mean next-token loss over every target token of the set (summed, then divided once), so it
    does not depend on batch size or padding. The same function scores tunelab's and TRL's models."""
    import torch
    import torch.nn.functional as F

    device = next(model.parameters()).device
    model.eval()
    loss_sum, targets = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            chunk = examples[i : i + batch_size]
            width = max(len(e["input_ids"]) for e in chunk)
            ids = torch.zeros(len(chunk), width, dtype=torch.long)
            mask = torch.zeros(len(chunk), width, dtype=torch.long)
            labels = torch.full((len(chunk), width), -100, dtype=torch.long)
            for row, e in enumerate(chunk):
                n = len(e["input_ids"])
                ids[row, :n], mask[row, :n] = torch.tensor(e["input_ids"]), 1
                labels[row, :n] = torch.tensor(e["labels"])
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
            shifted, target = logits[:, :-1].float(), labels[:, 1:].to(device)
            loss_sum += float(F.cross_entropy(shifted.transpose(1, 2), target, reduction="sum"))
            targets += int((target != -100).sum())
    return {"eval_loss": loss_sum / targets, "eval_targets": targets}


def neutral_eval(model: Any, model_dir: str, validation: Path) -> dict[str, float]:
    tokenizer = chat_tokenizer(model_dir)
    return eval_loss(model, [encode(tokenizer, m) for m in chat_rows(validation)])


# ---------------------------------------------------------------------------------------------
# TRL


def trl_config(out_dir: Path, packing: bool, bf16: bool, max_steps: int) -> Any:
    """SFTConfig with tunelab's settings. Gradient checkpointing (TRL's default is on; it recomputes
    activations, slower) is off, as in tunelab. bf16 is run both ways (`bench.py` runs each peer at
    fp32 and at bf16=True: autocast over float32 weights, as tunelab's bf16), so the comparison is fair
    whichever tunelab's `precision: auto` picks on the machine. `max_steps` > 0 caps the run (a
    throughput probe, where bf16 is emulated in software and a whole epoch would take hours)."""
    import torch
    from trl import SFTConfig

    return SFTConfig(
        output_dir=str(out_dir),
        num_train_epochs=1,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        weight_decay=0.0,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        max_grad_norm=1.0,
        max_length=MAX_LEN,
        packing=packing,  # strategy "bfd": best-fit decreasing, then padding-free batches
        completion_only_loss=True,
        assistant_only_loss=False,
        gradient_checkpointing=False,
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


def prompt_completion(messages: list[dict[str, str]]) -> dict[str, Any]:
    return {"prompt": messages[:-1], "completion": messages[-1:]}


def run_trl(work: Path, packing: bool, bf16: bool, max_steps: int, out: Path) -> None:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTTrainer

    inputs = read_json(work / "inputs.json")
    data_dir = Path(inputs["sft_data_dir"])  # tunelab's run folder data/: the rows it trained on
    tokenizer = chat_tokenizer(inputs["model"])
    train_chats = chat_rows(data_dir / "train.jsonl")
    model = AutoModelForCausalLM.from_pretrained(inputs["model"], dtype=torch.float32)  # masters, as tunelab
    timer = loop_timer()
    args = trl_config(work / f"trl-pack-{'on' if packing else 'off'}", packing, bf16, max_steps)
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([prompt_completion(m) for m in train_chats]),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    tokens = sum(len(row["input_ids"]) for row in trainer.train_dataset)  # no padding is ever counted
    identical = None if packing else same_loss_tokens(trainer.train_dataset, tokenizer, train_chats)
    trainer.train()
    epoch_steps = math.ceil(len(trainer.train_dataset) / BATCH)
    result = {
        "framework": "trl",
        "compute": "bf16" if bf16 else "fp32",
        "probe": max_steps > 0,
        "packing": packing,
        "loss_tokens_identical": identical,
        "train_rows": len(train_chats),
        "rows_after_packing": len(trainer.train_dataset),
        "optimizer": args.optim,  # the Trainer's default: fused AdamW on torch >= 2.8
        "gradient_checkpointing": bool(getattr(model, "is_gradient_checkpointing", False)),
        "steps": timer.steps,
        "loop_s": timer.seconds,
        # A capped run (probe) trains on its first steps only: the epoch's mean tokens per step.
        "tokens": round(tokens * timer.steps / epoch_steps),
        "tokens_per_s": tokens * timer.steps / epoch_steps / timer.seconds,
        "train_loss": final_train_loss(trainer_step_losses(trainer.state.log_history)),
        "matmul_params": matmul_params(model),
        "peak_cuda_mb": peak_cuda_mb(),
        **neutral_eval(model, inputs["model"], data_dir / "validation.jsonl"),
    }
    write_json(out, result)


def same_loss_tokens(dataset: Any, tokenizer: Any, chats: list[list[dict[str, str]]]) -> dict[str, Any]:
    """Does TRL train on tunelab's tokens? Compare TRL's processed rows with tunelab's tokenisation
    (tunelab.data.tokenize, the function its data stage calls): same ids, and the same positions in
    the loss (TRL's completion_mask against tunelab's labels)."""
    from tunelab.data.records import Chat, Message
    from tunelab.data.tokenize import IGNORE_INDEX, LengthPolicy, tokenize_chats

    records = [
        Chat(tuple(Message(m["role"], m["content"]) for m in c), source=f"row {i}")
        for i, c in enumerate(chats)
    ]
    ours, _ = tokenize_chats(tokenizer, records, LengthPolicy(MAX_LEN))
    mismatched, loss_tokens = [], 0
    for i, (theirs, mine) in enumerate(zip(dataset, ours, strict=True)):
        our_mask = [int(label != IGNORE_INDEX) for label in mine["labels"]]
        # position 0 is never a target (nothing precedes it), whatever the mask says there
        if theirs["input_ids"] != mine["input_ids"] or theirs["completion_mask"][1:] != our_mask[1:]:
            mismatched.append(i)
        loss_tokens += sum(our_mask[1:])
    return {
        "identical": not mismatched,
        "examples": len(ours),
        "loss_tokens": loss_tokens,
        "mismatched": mismatched[:10],
    }


# ---------------------------------------------------------------------------------------------
# evaluating a tunelab run's final/ with the same function


def run_eval(work: Path, model_dir: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM

    inputs = read_json(work / "inputs.json")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype_for_device())
    result = {"matmul_params": matmul_params(model)}
    result.update(neutral_eval(model, inputs["model"], Path(inputs["sft_data_dir"]) / "validation.jsonl"))
    write_json(out, result)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["trl", "eval"])
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--packing", choices=["on", "off"], default="off")
    parser.add_argument("--model", type=Path)
    parser.add_argument("--bf16", choices=["on", "off"], default="off")
    parser.add_argument("--max-steps", type=int, default=0, help="cap the run (a throughput probe)")
    args = parser.parse_args()
    if args.command == "trl":
        run_trl(args.work, args.packing == "on", args.bf16 == "on", args.max_steps, args.out)
    else:
        run_eval(args.work, args.model, args.out)


if __name__ == "__main__":
    main()
