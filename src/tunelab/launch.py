"""`tunelab train --nproc N`: start N training processes through a launcher, one command for the user.

DDP runs under `torch.distributed.run` (gloo on CPU, NCCL on CUDA: accelerate picks the backend); FSDP
and DeepSpeed run under `accelerate launch` with the config shipped in recipes/accelerate/, because
accelerate reads their plugin settings from the environment that its launcher sets. Each process then
runs the ordinary `tunelab train`, and `runner.train` does the rest (one run folder, made by rank 0).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tunelab.errors import TunelabError

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "accelerate"


def under_launcher() -> bool:
    """True inside a process started by torchrun / accelerate launch (it must not launch again)."""
    return "LOCAL_RANK" in os.environ or "RANK" in os.environ


def launch_command(
    recipe: Path,
    nproc: int,
    distributed: str,
    deepspeed_stage: int,
    overrides: list[str],
    resume: Path | None,
    debug: bool,
) -> list[str]:
    train_args = [str(recipe), *(a for o in overrides for a in ("--set", o))]
    train_args += ["--resume", str(resume)] if resume else []
    train_args += ["--debug"] if debug else []
    if distributed == "ddp":
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            str(nproc),
            "-m",
            "tunelab",
            "train",
            *train_args,
        ]
    config = accelerate_config(distributed, deepspeed_stage)
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(config),
        "--num_processes",
        str(nproc),
        "-m",
        "tunelab",
        "train",
        *train_args,
    ]


def accelerate_config(distributed: str, deepspeed_stage: int) -> Path:
    name = "fsdp.yaml" if distributed == "fsdp" else f"deepspeed-zero{deepspeed_stage}.yaml"
    path = CONFIGS / name
    if not path.is_file():
        raise TunelabError(
            f"accelerate config {path} not found", fix="run from a tunelab checkout, or use accelerate launch"
        )
    return path


def check_can_launch(nproc: int, distributed: str) -> None:
    import importlib.util

    import torch

    if nproc < 2:
        raise TunelabError(f"--nproc {nproc}: launching needs 2 or more processes")
    if distributed != "ddp" and not torch.cuda.is_available():
        raise TunelabError(
            f"train.distributed: {distributed} shards the model across GPUs; no CUDA GPU is visible",
            fix="use train.distributed: ddp on CPU (gloo)",
        )
    if distributed == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        raise TunelabError("train.distributed: deepspeed needs the deepspeed package: pip install deepspeed")


SHUTDOWN_TIMEOUT_S = 600


def run(command: list[str], nproc: int) -> int:
    """Run the launcher in the foreground; its processes print their own output."""
    env = dict(os.environ)
    # Each process gets its share of the cores, instead of every process spinning threads on all of them.
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    # On Ctrl-C the launcher forwards SIGINT to each process, which finishes its step and checkpoints
    # (training/stopping.py), then SIGKILLs them after this timeout: torch's 30 s is too short for a
    # large model's checkpoint.
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(SHUTDOWN_TIMEOUT_S))
    launcher = subprocess.Popen(command, env=env)
    while True:
        try:
            return launcher.wait()
        except KeyboardInterrupt:
            # The launcher had the same Ctrl-C (it shares this process's group) and is stopping its
            # processes. Killing it here, as subprocess.run would, would orphan them mid-step.
            continue
