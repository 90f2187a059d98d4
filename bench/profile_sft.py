"""Where tunelab's SFT training loop spends its time: a few steps of `tunelab train` under torch.profiler.

    .venv/bin/python bench/profile_sft.py --work DIR --out profile.json [--packing on] [--steps 6]

The recipe is bench/sft.py's (same model, data and settings) with `max_steps`. tunelab's source is not
touched: the loop's step functions are wrapped in this process only, to mark phases in the trace
(batch = collate the micro-batch, forward_backward = loss and backward, optimizer = clip, step,
schedule). The first steps are skipped (allocation, first-call overheads); the report lists the
phases, then the operators with the most self time.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

# bench/ is a folder of scripts, not a package: its modules import each other by plain name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import read_json, write_json
from sft import tunelab_recipe

WAIT, WARMUP = 1, 1
PHASES = ("batch", "forward_backward", "optimizer")


def instrument(profiler: Any) -> None:
    """Mark the loop's phases and advance the profiler once per optimizer step."""
    import torch

    from tunelab.training import loop

    def marked(name: str, fn: Any, step_after: bool = False) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with torch.profiler.record_function(name):
                out = fn(*args, **kwargs)
            if step_after:
                profiler.step()
            return out

        return wrapper

    loop.MicroBatches.next = marked("batch", loop.MicroBatches.next)
    loop.accumulate_gradients = marked("forward_backward", loop.accumulate_gradients)
    loop.optimizer_step = marked("optimizer", loop.optimizer_step, step_after=True)


def summarise(profiler: Any, active_steps: int, top: int) -> dict[str, Any]:
    events = profiler.key_averages()
    total_ms = sum(e.self_cpu_time_total for e in events) / 1000
    phases = {e.key: round(e.cpu_time_total / 1000 / active_steps, 2) for e in events if e.key in PHASES}
    ops = sorted(
        (e for e in events if e.key not in PHASES and not e.key.startswith("ProfilerStep")),
        key=lambda e: e.self_cpu_time_total,
        reverse=True,
    )
    return {
        "steps_profiled": active_steps,
        "ms_per_step": round(total_ms / active_steps, 2),
        "phase_ms_per_step": phases,
        "top_ops": [
            {
                "op": e.key,
                "self_ms_per_step": round(e.self_cpu_time_total / 1000 / active_steps, 2),
                "share": round(e.self_cpu_time_total / 1000 / total_ms, 3),
                "calls_per_step": round(e.count / active_steps, 1),
            }
            for e in ops[:top]
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--packing", choices=["on", "off"], default="on")
    parser.add_argument("--steps", type=int, default=6, help="profiled steps (after 2 skipped)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()

    import torch

    from tunelab.config import load_recipe
    from tunelab.runner import train

    recipe = tunelab_recipe(
        read_json(args.work / "inputs.json"), args.work / "profile-runs", args.packing == "on"
    )
    recipe["name"] = f"bench-sft-profile-pack-{args.packing}"
    recipe["train"]["max_steps"] = WAIT + WARMUP + args.steps
    path = args.work / f"profile-recipe-{args.packing}.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")

    schedule = torch.profiler.schedule(wait=WAIT, warmup=WARMUP, active=args.steps, repeat=1)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], schedule=schedule) as prof:
        instrument(prof)
        train(load_recipe(path))
    result = summarise(prof, args.steps, args.top)
    result["packing"] = args.packing == "on"
    write_json(args.out, result)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))


if __name__ == "__main__":
    main()
