"""Pieces every speed bench shares: measured subprocesses, the machine's matmul peak, MFU, timing.

Why a subprocess per run: peak RSS (ru_maxrss) only ever grows within a process, so two runs in one
process would report the larger of the two. `os.wait4` hands back the finished child's own rusage.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
SHARED = REPO.parent / "shared" / "data"


# ---------------------------------------------------------------------------------------------
# measured subprocesses


@dataclass
class Measured:
    returncode: int
    wall_s: float
    peak_rss_mb: float
    log: Path
    cpu_s: float = 0.0  # user + system CPU time of the whole process
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average when it started and when it ended

    def as_dict(self) -> dict[str, Any]:
        """What a result records about its process: on a shared machine the load says how far the
        wall-clock numbers can be trusted (load above the core count means runs queued for CPU)."""
        return {
            "process_wall_s": round(self.wall_s, 1),
            "process_cpu_s": round(self.cpu_s, 1),
            "peak_rss_mb": self.peak_rss_mb,
            "load_average_start_end": list(self.load),
        }


def run_measured(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Measured:
    """Run `cmd` to completion with its output in `log`; its wall time and its own peak RSS."""
    log.parent.mkdir(parents=True, exist_ok=True)
    load_before = round(os.getloadavg()[0], 2)
    started = time.perf_counter()
    with log.open("w", encoding="utf-8") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # so Popen does not try to reap it again
    return Measured(
        proc.returncode,
        time.perf_counter() - started,
        usage.ru_maxrss / 1024,  # KiB on Linux
        log,
        usage.ru_utime + usage.ru_stime,
        (load_before, round(os.getloadavg()[0], 2)),
    )


def check(measured: Measured, what: str) -> None:
    if measured.returncode != 0:
        tail = "\n".join(measured.log.read_text(encoding="utf-8", errors="replace").splitlines()[-40:])
        raise SystemExit(f"{what} failed (exit {measured.returncode}); log {measured.log}:\n{tail}")


def python_cmd(script: str, *args: str) -> list[str]:
    return [sys.executable, str(BENCH / script), *map(str, args)]


def bench_env() -> dict[str, str]:
    # Offline (nothing here needs the network), no experiment trackers, no tokenizer thread pools
    # competing with torch for the two cores.
    return {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "WANDB_DISABLED": "true",
        "PYTHONUNBUFFERED": "1",
    }


def read_json(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------
# the machine


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown-cpu"


def cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


SPEED_FLAGS = {"avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8"}


def machine_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"gpu{torch.cuda.device_count()}-{slug(torch.cuda.get_device_name(0))}"
    return f"cpu{os.cpu_count()}-{slug(cpu_model())}"


def describe_machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "name": machine_name(),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        # The flags that decide the matmul kernels and what `precision: auto` picks (bench/README).
        "cpu_flags": sorted(cpu_flags() & SPEED_FLAGS),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "transformers", "accelerate", "peft", "trl", "datasets", "tunelab"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def matmul_peak(dtype_name: str, size: int, seconds: float = 3.0) -> dict[str, Any]:
    """Best achieved FLOP/s of a square matmul over ~`seconds`: the denominator of MFU.

    "Best" rather than mean because the question is what the hardware can do; the machine may be
    shared, and a busy neighbour only ever makes a single timing slower.
    """
    import torch

    dtype = getattr(torch, dtype_name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    torch.matmul(a, b)  # first call: kernel selection, allocation
    best, reps, deadline = float("inf"), 0, time.perf_counter() + seconds
    while reps < 3 or time.perf_counter() < deadline:
        _sync()
        start = time.perf_counter()
        torch.matmul(a, b)
        _sync()
        best = min(best, time.perf_counter() - start)
        reps += 1
    return {"dtype": dtype_name, "size": size, "reps": reps, "tflops": 2 * size**3 / best / 1e12}


def _sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure_peaks(quick: bool) -> dict[str, Any]:
    """fp32 and bf16 matmul peaks. CPUs without bf16 instructions (avx512_bf16 / amx_bf16) run bf16
    matmuls through conversions, so the bf16 figure there says how slow that is, not a peak to use."""
    import torch

    on_gpu = torch.cuda.is_available()
    size = 8192 if on_gpu else (1024 if quick else 2048)
    seconds = 1.0 if quick else 3.0
    fp32 = matmul_peak("float32", size, seconds)
    bf16 = matmul_peak("bfloat16", size if on_gpu else 512, seconds)  # slow on such CPUs: kept small
    if on_gpu:
        fast_bf16, note = True, "GPU tensor cores"
    else:
        flags = cpu_flags()
        fast_bf16 = bool({"avx512_bf16", "amx_bf16"} & flags)
        note = (
            "native bf16 instructions present"
            if fast_bf16
            else "no native bf16 (neither avx512_bf16 nor amx_bf16): bf16 is converted in software; "
            "training here runs in fp32, so MFU uses the fp32 peak"
        )
    return {
        "fp32": fp32,
        "bf16": bf16,
        "fast_bf16": fast_bf16,
        "bf16_note": note,
        # tunelab's dtype auto: bf16 weights on a CUDA device with bf16, fp32 otherwise; the peers match it.
        "mfu_peak_dtype": "bfloat16" if on_gpu and fast_bf16 else "float32",
    }


# ---------------------------------------------------------------------------------------------
# model arithmetic


def matmul_params(model: Any) -> int:
    """Parameters that do matmul work per token: every nn.Linear weight (the output projection too).

    Embedding lookups are gathers, not matmuls, so they are left out; so are norms and biases (a
    rounding error next to the weights). A tied output projection is counted once, as a Linear.
    """
    import torch

    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def mfu(n_params: int, tokens_per_s: float, peak_tflops: float) -> float:
    """Model FLOPs utilisation: 6·N·tokens/s (forward 2N + backward 4N per token) over the peak.
    Attention's own score/value FLOPs are left out, as in the usual 6N estimate."""
    return 6 * n_params * tokens_per_s / (peak_tflops * 1e12)


def dtype_for_device() -> Any:
    """The weight dtype tunelab's `dtype: auto` picks, so a peer trains in the same precision."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def peak_cuda_mb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


# ---------------------------------------------------------------------------------------------
# timing the training loop, the same way for tunelab and the Trainer


def tunelab_loop(metrics_path: Path) -> tuple[float, int, list[float]]:
    """(seconds inside tunelab's training loop, optimizer steps, per-step losses) from metrics.jsonl.

    Each training log line covers a window of steps: it reports the window's tokens/s and the
    cumulative token count, and the window clock starts when `fit` starts (after the model, optimizer
    and data are ready) and restarts at each log line. With evaluation and checkpoints only after the
    last step, the windows tile the loop exactly: sum(window tokens / window tokens/s) is the time from
    the start of `fit` to the end of the last optimizer step.
    """
    rows = [json.loads(line) for line in metrics_path.read_text(encoding="utf-8").splitlines() if line]
    train_rows = [r for r in rows if "tokens_per_s" in r]
    seconds, previous_tokens = 0.0, 0.0
    for row in train_rows:
        seconds += (row["tokens"] - previous_tokens) / row["tokens_per_s"]
        previous_tokens = row["tokens"]
    steps = int(train_rows[-1]["step"]) if train_rows else 0
    return seconds, steps, [row["loss"] for row in train_rows]


def loop_timer() -> Any:
    """A TrainerCallback timing the Trainer's loop as `tunelab_loop_seconds` times tunelab's: from
    on_train_begin (the model, optimizer and dataloader are ready) to the end of the last optimizer
    step, less the time spent logging (tunelab's window clock also restarts after each log line)."""
    from transformers import TrainerCallback

    class LoopTimer(TrainerCallback):
        def __init__(self) -> None:
            self.start = self.end = 0.0
            self.steps = 0
            self.logging = self.pending = 0.0

        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _sync()
            self.start = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            _sync()
            self.end = time.perf_counter()
            self.steps += 1
            self.logging, self.pending = self.logging + self.pending, 0.0

        def on_log(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            # The Trainer logs right after on_step_end; a log after the last step is outside the loop
            # anyway, so a gap only counts once the next step has ended.
            self.pending = time.perf_counter() - self.end

        @property
        def seconds(self) -> float:
            return self.end - self.start - self.logging

    return LoopTimer()


FINAL_LOSS_STEPS = 5


def final_train_loss(step_losses: list[float]) -> float | None:
    """The mean loss of the last FINAL_LOSS_STEPS optimizer steps: both frameworks log every step, so
    the same window is averaged whatever each one's own logging cadence would be."""
    tail = step_losses[-FINAL_LOSS_STEPS:]
    return sum(tail) / len(tail) if tail else None


def trainer_step_losses(log_history: list[dict[str, Any]]) -> list[float]:
    return [row["loss"] for row in log_history if "loss" in row]
