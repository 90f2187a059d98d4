"""Benchmark: the feedback loop end to end on SmolLM2-135M-Instruct and HH-RLHF prompts, with a
SCRIPTED RATER standing in for people.

    .venv/bin/python bench/feedback_loop.py [--sft-recipe recipes/hh-smollm2-sft.yaml]
        [--dpo-recipe recipes/hh-smollm2-dpo-from-sft.yaml] [--prompts 48] [--held-out 32]

1. train SFT (`tunelab train` on the SFT recipe, model.name = the packaged SmolLM2 GGUF);
2. `tunelab sample` from the SFT run, 2 answers per prompt, on --prompts HH-RLHF prompts;
3. the scripted rater rates every pair through FeedbackStore.next_pair/rate, as the dashboard does;
4. `feedback export --format trl` (held-out prompts as --held-out, so none leaks into DPO);
5. DPO from the SFT adapter (the DPO recipe, model.adapter = the SFT run, data.train = the export);
6. DPO vs SFT on --held-out other HH prompts: one greedy answer each (`tunelab sample --against`),
   judged by the same scripted rater through the store, then `compare-models` (win-rate, 95% CI).

THE RATER IS NOT A HUMAN. It prefers the candidate whose ROUGE-L F1 (rouge-score, stemmed) to the
HH-RLHF chosen answer minus its ROUGE-L F1 to the rejected answer is higher; equal margins are a
tie. It never says "both bad". It measures closeness of wording to one reference answer, not
helpfulness or harmlessness, so the win-rate says whether DPO moved SmolLM2 toward HH's chosen
wording, nothing more.

Prompts: HH rows are split at their last "\\n\\nAssistant:" into the dialogue (the prompt, as chat
messages), the chosen and the rejected answer. Three disjoint slices: SFT learns from rows before
--rating-start (default 1000), the rating prompts come from there on, and the held-out prompts from
--held-out-start (default 2000) on; dialogues of at most --max-prompt-chars characters, so prompt
plus answer fit max_seq_len. The defaults take about 6 minutes on 2 CPU cores (answers of 48 tokens).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
HH = REPO.parent / "shared" / "data" / "hh_rlhf" / "harmless_base_test.jsonl"
RATER = "scripted-rougeL (not a human)"
RATING_START, HELD_OUT_START = 1000, 2000  # HH rows: SFT [0, rating), rating [rating, ...), held out
RESULT = BENCH / "results" / f"{date(2026, 12, 2).isoformat()}-feedback-loop.json"


# -- prompts and references -----------------------------------------------------------------------


def split_hh(row: dict[str, Any]) -> dict[str, Any] | None:
    """An HH row as {messages, chosen, rejected}, cut at the last Assistant turn by the data stage's own
    preference converter; None when the two dialogues do not share that prompt (2 of the 2,312 rows)
    or a side does not parse."""
    from tunelab.data.formats import CONVERTERS, Columns, RowError

    try:
        pair = CONVERTERS["preference"](row, Columns())
    except RowError:
        return None
    if not pair.prompt or pair.prompt[-1].role != "user":
        return None
    messages = [{"role": m.role, "content": m.content} for m in pair.prompt]
    return {"messages": messages, "chosen": pair.chosen.strip(), "rejected": pair.rejected.strip()}


def hh_prompts(path: Path, start: int, count: int, max_chars: int) -> list[dict[str, Any]]:
    """`count` distinct, short-enough HH prompts from row `start` on, with their reference answers."""
    lines = path.read_text(encoding="utf-8").splitlines()[start:]
    picked: dict[str, dict[str, Any]] = {}
    for line in lines:
        item = split_hh(json.loads(line))
        if item is None or sum(len(m["content"]) for m in item["messages"]) > max_chars:
            continue
        picked.setdefault(json.dumps(item["messages"]), item)
        if len(picked) == count:
            break
    return list(picked.values())


def write_prompts(items: list[dict[str, Any]], path: Path) -> Path:
    path.write_text("".join(json.dumps({"messages": i["messages"]}) + "\n" for i in items), encoding="utf-8")
    return path


# -- the scripted rater ---------------------------------------------------------------------------


class ScriptedRater:
    """NOT A HUMAN: prefers the answer closer (ROUGE-L F1) to HH's chosen answer than to its rejected
    one. Rates through FeedbackStore.next_pair / rate, exactly as a person on the dashboard would."""

    def __init__(self, references: list[dict[str, Any]], name: str = RATER) -> None:
        from rouge_score import rouge_scorer

        from tunelab.feedback.store import prompt_key

        self.name = name
        self.scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
        self.references = {prompt_key(r["messages"]): r for r in references}

    def margin(self, key: str, answer: str) -> float:
        ref = self.references[key]
        score = self.scorer.score
        return (
            score(ref["chosen"], answer)["rougeL"].fmeasure
            - score(ref["rejected"], answer)["rougeL"].fmeasure
        )

    def rate_all(self, store: Any) -> dict[str, int]:
        """Rate every pair the store hands this rater; returns the clicks by choice."""
        from tunelab.feedback.store import prompt_key

        clicks = {"left": 0, "right": 0, "tie": 0}
        while (job := store.next_pair(self.name)) is not None:
            key = prompt_key(job.prompt)
            left, right = self.margin(key, job.left.text), self.margin(key, job.right.text)
            choice = "left" if left > right else "right" if right > left else "tie"
            store.rate(job.pair_id, self.name, left_id=job.left.id, choice=choice,
                       comment=f"ROUGE-L margin {left:.3f} vs {right:.3f}")  # fmt: skip
            clicks[choice] += 1
        return clicks


# -- steps ----------------------------------------------------------------------------------------


def train_run(recipe: Path, sets: list[str], runs: Path) -> Path:
    """`tunelab train` in its own process (memory and accelerate state end with it); the run folder."""
    cmd = [sys.executable, "-m", "tunelab", "train", str(recipe), "--set", f"output.dir={runs}"]
    for item in sets:
        cmd += ["--set", item]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true"}
    subprocess.run(cmd, check=True, env=env, cwd=REPO)
    (run_dir,) = [p for p in runs.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


def packaged_smollm2() -> str:
    from tunelab.models.packaged import packaged_model

    return str(packaged_model("smollm2-135m-instruct"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sft-recipe", type=Path, default=REPO / "recipes" / "hh-smollm2-sft.yaml")
    parser.add_argument("--dpo-recipe", type=Path, default=REPO / "recipes" / "hh-smollm2-dpo-from-sft.yaml")
    parser.add_argument("--model", help="model.name for both recipes (default: the packaged SmolLM2 GGUF)")
    parser.add_argument("--sft-run", type=Path, help="an SFT run to reuse instead of training one")
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], help="an override for both recipes"
    )
    parser.add_argument("--format", choices=("trl", "openai", "kto"), default="trl",
                        help="the export the preference run trains on (kto: with the KTO recipe)")  # fmt: skip
    parser.add_argument("--dpo-set", dest="dpo_sets", action="append", default=[], help="an override for DPO")
    parser.add_argument("--prompts", type=int, default=64, help="rating prompts")
    parser.add_argument("--held-out", type=int, default=48, help="held-out prompts for the win-rate")
    parser.add_argument(
        "--rating-start", type=int, default=RATING_START, help="first HH row of the rating prompts"
    )
    parser.add_argument("--held-out-start", type=int, default=HELD_OUT_START, help="first HH row held out")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--max-prompt-chars", type=int, default=500)
    parser.add_argument("--hh", type=Path, default=HH)
    # default: a fresh temporary folder, outside the repository (runs, database, exports are no results)
    parser.add_argument("--work", type=Path, help="where runs, the database and the exports go")
    parser.add_argument("--out", type=Path, default=RESULT)
    return parser.parse_args(argv)


def _step(timings: dict[str, float], name: str, started: float) -> None:
    timings[name] = round(time.perf_counter() - started, 1)
    print(f"[{name}] {timings[name]} s", flush=True)


def rate_samples(store_db: Path, references: list[dict[str, Any]]) -> dict[str, int]:
    from tunelab.feedback.store import FeedbackStore

    clicks = ScriptedRater(references).rate_all(FeedbackStore(store_db))
    print(f"scripted rater (not a human): {clicks}", flush=True)
    return clicks


def loop(args: argparse.Namespace) -> dict[str, Any]:
    """Steps 1-6; returns the result (timings, counts, the export report, the win-rate)."""
    from tunelab.feedback.export import export_feedback
    from tunelab.feedback.sample import Settings, sample
    from tunelab.feedback.winrate import compare_models

    work = args.work or Path(tempfile.mkdtemp(prefix="tunelab-feedback-loop-"))
    timings, t = {}, time.perf_counter()
    work.mkdir(parents=True, exist_ok=True)
    db = work / "feedback.sqlite"
    db.unlink(missing_ok=True)
    sets = [f"model.name={args.model or packaged_smollm2()}", *args.sets]
    rating = hh_prompts(args.hh, args.rating_start, args.prompts, args.max_prompt_chars)
    held = hh_prompts(args.hh, args.held_out_start, args.held_out, args.max_prompt_chars)
    if {json.dumps(i["messages"]) for i in rating} & {json.dumps(i["messages"]) for i in held}:
        raise SystemExit(
            "the rating prompts reach the held-out rows: lower --prompts or raise --held-out-start"
        )
    rating_file, held_file = (
        write_prompts(rating, work / "prompts.jsonl"),
        write_prompts(held, work / "held.jsonl"),
    )
    sft_sets = [*sets, *_hh_slice(args.sft_recipe, args.hh, args.rating_start, work)]
    sft = args.sft_run or train_run(args.sft_recipe, sft_sets, _fresh(work / "runs-sft"))
    _step(timings, "train_sft", t)
    t = time.perf_counter()
    drawn = Settings(n=2, temperature=0.8, top_p=0.95, max_new_tokens=args.max_new_tokens, seed=0)
    sampled = sample(sft, rating_file, settings=drawn, database=db)
    print(f"sampled {sampled.samples} answers, {sampled.pairs} pairs", flush=True)
    clicks = rate_samples(db, rating)
    pairs_file = work / f"pairs.{args.format}.jsonl"
    exported = export_feedback(db, args.format, pairs_file, held_out=held_file)
    print(
        f"exported {exported['rows']} rows: {exported['ratings_by_fate']} {exported['warnings']}", flush=True
    )
    _step(timings, "sample_rate_export", t)
    t = time.perf_counter()
    dpo_sets = [*sets, f"model.adapter={sft}", f"data.train={pairs_file}", *args.dpo_sets]
    dpo = train_run(args.dpo_recipe, dpo_sets, _fresh(work / "runs-dpo"))
    _step(timings, "train_dpo", t)
    t = time.perf_counter()
    greedy = Settings(n=1, temperature=0.0, max_new_tokens=args.max_new_tokens)
    sample(dpo, held_file, against=str(sft), settings=greedy, database=db)
    held_clicks = rate_samples(db, held)
    result = compare_models(str(dpo), str(sft), held_file, database=db, n_boot=2000, seed=0)
    _step(timings, "compare", t)
    return {
        "rater": RATER, "rater_is_human": False, "sft_run": str(sft), "dpo_run": str(dpo),
        "rating_prompts": len(rating), "held_out_prompts": len(held), "samples": sampled.samples,
        "pairs": sampled.pairs, "clicks": clicks, "held_out_clicks": held_clicks,
        "export": exported, "compare": result, "timings_s": timings,
    }  # fmt: skip


def _hh_slice(recipe: Path, hh: Path, end: int, work: Path) -> list[str]:
    """An HH recipe (data.format hh_dialogue) learns from rows before `end` only, never from the rows the
    rating and held-out prompts come from: the override that says so, or none for another recipe."""
    import yaml

    if yaml.safe_load(recipe.read_text(encoding="utf-8"))["data"].get("format") != "hh_dialogue":
        return []
    rows = hh.read_text(encoding="utf-8").splitlines(keepends=True)[:end]
    (work / "hh_train.jsonl").write_text("".join(rows), encoding="utf-8")
    return [f"data.train={work / 'hh_train.jsonl'}"]


def _fresh(folder: Path) -> Path:
    if folder.exists() and any(folder.iterdir()):
        raise SystemExit(f"{folder} is not empty: remove it (or pass --work elsewhere) to run the loop again")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    started = time.perf_counter()
    result = loop(args)
    result["wall_s"] = round(time.perf_counter() - started, 1)
    compare = result["compare"]
    low, high = compare["ci95"]
    print(
        f"{args.dpo_recipe.stem} vs SFT on {compare['n_prompts']} held-out prompts: win-rate {compare['win_rate']:.3f} "
        f"(95% CI {low:.3f}-{high:.3f}; {compare['wins']} wins, {compare['ties']} ties, {compare['losses']} "
        f"losses), judged by a SCRIPTED rater (ROUGE-L to HH's chosen vs rejected answer), not by people"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(args.out)
    return result


if __name__ == "__main__":
    main()
