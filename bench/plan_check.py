"""`tunelab plan`'s memory estimate for one bench recipe, for comparison with the run's measured peak RSS.

    .venv/bin/python bench/plan_check.py --recipe RECIPE.yaml --out plan.json

bench/bench.py runs it, in its own process (the estimate includes the process's own baseline, which
is what a fresh `tunelab train` process also carries), on each tunelab recipe it trained. No probe:
the estimate alone is what the issue's 25% target is about; the probe measures rather than estimates.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

MB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    from tunelab.config import load_recipe
    from tunelab.plan import plan

    result = plan(load_recipe(args.recipe), probe_steps=0)
    estimate = result.estimate
    out = {
        "recipe": str(args.recipe),
        # The whole `tunelab train` process (its peak RSS is what the bench measures): the largest phase.
        "estimate_mb": result.run.peak / MB,
        "phases_mb": {name: value / MB for name, value in result.run.phases.items()},
        "training_estimate_mb": estimate.total / MB,
        "components_mb": {name: value / MB for name, value in estimate.components().items()},
    }
    args.out.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
