"""Benchmark: the content screen (data.content_screen, the offline `profanity` scorer) on real data.

    .venv/bin/python bench/content_screen.py

1. The 335 Alpaca rows of ../shared/data/alpaca with the 30 offensive rows of
   bench/data/offensive_alpaca.jsonl (written for this benchmark) inserted at seeded positions: which
   lines the screen flags, and its precision and recall against the inserted rows, at three thresholds.
   Alpaca rows the screen flags are printed, so a reader can judge whether they are false positives.
2. ../shared/data/hh_rlhf (2,312 harmless-base pairs): the flagged rate of chosen against rejected.

Results go in bench/README.md.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from tunelab.config import ContentScreen
from tunelab.data.formats import load_split
from tunelab.data.screen import score_records

HERE = Path(__file__).resolve().parent
SHARED = HERE.parents[1] / "shared" / "data"
THRESHOLDS = (0.5, 0.8, 0.9)


def mixed_file(folder: Path) -> tuple[Path, set[int]]:
    """Alpaca with the offensive rows inserted at seeded positions; the 1-based lines they landed on."""
    clean = (SHARED / "alpaca" / "alpaca_data_first335.jsonl").read_text().splitlines()
    offensive = (HERE / "data" / "offensive_alpaca.jsonl").read_text().splitlines()
    rows = [(line, False) for line in clean]
    rng = random.Random(0)
    for line in offensive:
        rows.insert(rng.randrange(len(rows) + 1), (line, True))
    path = folder / "alpaca_mixed.jsonl"
    path.write_text("".join(line + "\n" for line, _ in rows))
    return path, {i + 1 for i, (_, bad) in enumerate(rows) if bad}


def alpaca_mix() -> dict:
    with tempfile.TemporaryDirectory() as folder:
        path, planted = mixed_file(Path(folder))
        records = load_split(path, on_error="skip").records  # one Alpaca row has an empty output
        start = time.perf_counter()
        screened = score_records(records, ContentScreen())
        seconds = time.perf_counter() - start
        lines = [int(r.source.rsplit(":", 1)[1]) for r in records]
    results = {
        "rows": len(records),
        "planted": len(planted),
        "score_s": round(seconds, 3),
        "by_threshold": {},
    }
    for threshold in THRESHOLDS:
        flagged = {line for line, s in zip(lines, screened.scores, strict=True) if s >= threshold}
        hits = len(flagged & planted)
        missed = sorted(planted - flagged)
        extra = sorted(flagged - planted)
        results["by_threshold"][threshold] = {
            "flagged": len(flagged),
            "precision": round(hits / len(flagged), 4) if flagged else None,
            "recall": round(hits / len(planted), 4),
            "missed_lines": missed,
            "clean_rows_flagged": [
                {"line": line, "score": round(screened.scores[lines.index(line)], 3),
                 "where": screened.where[lines.index(line)]}
                for line in extra
            ],
        }  # fmt: skip
    return results


def hh_rlhf() -> dict:
    # 9 of the 2,312 pairs are malformed (an empty chosen answer, no shared prompt): skipped, as dpo_hh.py does
    records = load_split(SHARED / "hh_rlhf" / "harmless_base_test.jsonl", on_error="skip").records
    start = time.perf_counter()
    screened = score_records(records, ContentScreen())
    seconds = time.perf_counter() - start
    out = {"pairs": len(records), "score_s": round(seconds, 3), "by_threshold": {}}
    for threshold in THRESHOLDS:
        chosen = [p["chosen"] >= threshold for p in screened.parts]
        rejected = [p["rejected"] >= threshold for p in screened.parts]
        out["by_threshold"][threshold] = {
            "chosen_flagged_rate": round(sum(chosen) / len(records), 4),
            "rejected_flagged_rate": round(sum(rejected) / len(records), 4),
            "only_chosen_flagged": sum(c and not r for c, r in zip(chosen, rejected, strict=True)),
            "only_rejected_flagged": sum(r and not c for c, r in zip(chosen, rejected, strict=True)),
        }
    return out


def main() -> None:
    results = {"alpaca_mixed": alpaca_mix(), "hh_rlhf": hh_rlhf()}
    out = HERE / "results" / f"{time.strftime('%Y-%m-%d')}-content-screen.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {out}")
    mix = results["alpaca_mixed"]
    print(f"\nAlpaca + {mix['planted']} planted rows ({mix['rows']} rows, scored in {mix['score_s']} s):")
    print("| threshold | flagged | precision | recall |\n| --- | --- | --- | --- |")
    for t, r in mix["by_threshold"].items():
        print(f"| {t} | {r['flagged']} | {r['precision']} | {r['recall']} |")
    hh = results["hh_rlhf"]
    print(f"\nhh_rlhf harmless-base test ({hh['pairs']} pairs, scored in {hh['score_s']} s):")
    print("| threshold | chosen flagged | rejected flagged | only chosen | only rejected |")
    print("| --- | --- | --- | --- | --- |")
    for t, r in hh["by_threshold"].items():
        print(
            f"| {t} | {r['chosen_flagged_rate']:.1%} | {r['rejected_flagged_rate']:.1%} | "
            f"{r['only_chosen_flagged']} | {r['only_rejected_flagged']} |"
        )


if __name__ == "__main__":
    main()
