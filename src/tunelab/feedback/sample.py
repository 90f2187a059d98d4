"""`tunelab sample`: answers from a run (and from its base or another run) to a file of prompts, stored
with their sampling settings and paired for blind rating.

Generation is the project's one core (generation.generate_batch: the training template, one stop
set, batched with left padding), so a rater judges exactly what `generate` and the server would say.
Sample k of every prompt is drawn after `torch.manual_seed(seed + k)` over the same batches, so the
same command with the same seed stores the same answers (on the same machine and versions).
Models are loaded one after the other, so two models never share memory.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path

import torch

from tunelab.data.fields import Columns
from tunelab.data.inputs import read_inputs
from tunelab.errors import TunelabError
from tunelab.feedback.store import FeedbackStore, Sample, pair_samples
from tunelab.generation import encode_prompt, generate_batch
from tunelab.inference import to_best_device
from tunelab.models.restore import Trained, find_final, load_run_or_base, read_info, run_dir_of
from tunelab.runs.registry import registry_path

Messages = list[dict[str, str]]
BASE = "base"  # --against base: the run's own base model


@dataclass(frozen=True)
class Settings:
    """How answers are drawn; stored with every sample."""

    n: int = 2
    temperature: float = 0.8
    top_p: float = 0.95
    max_new_tokens: int = 128
    seed: int = 0
    batch_size: int = 8

    def check(self) -> None:
        problems = []
        if self.n < 1:
            problems.append(f"--n must be at least 1 (got {self.n})")
        if self.temperature < 0:
            problems.append(f"--temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            problems.append(f"--top-p must be in (0, 1] (got {self.top_p})")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            problems.append("--max-new-tokens and --batch-size must be at least 1")
        if self.temperature == 0 and self.n > 1:
            # greedy decoding gives one answer per prompt: the n copies would be pairs of twins
            problems.append(f"--n {self.n} at --temperature 0 would store {self.n} identical answers")
        if problems:
            raise TunelabError("bad sampling settings", problems=problems, fix="see `tunelab sample --help`")


@dataclass(frozen=True)
class Sampled:
    database: Path
    models: list[str]
    prompts: int
    duplicate_prompts: int  # rows of the prompts file that repeat an earlier prompt, left out
    samples: int
    pairs: int


# -- models and their names -----------------------------------------------------------------------


def model_id(spec: str | Path) -> str:
    """What a model is called in the store: a run's id (its folder name), an export's path, or
    "base:<name>" for a base model. `compare-models` names its two models the same way."""
    final = find_final(spec)
    if final is None:
        return f"base:{spec}"
    run_dir = run_dir_of(final)
    return run_dir.name if run_dir is not None else str(final.resolve())


def against_spec(run: str | Path, against: str) -> str:
    """`--against base` means the run's own base model; anything else names a run or a base itself."""
    if against != BASE:
        return against
    final = find_final(run)
    if final is None:
        raise TunelabError(f"{run}: --against base needs a run (or export) whose base model is known")
    return str(read_info(final)["base_model"])


def default_database(run: str | Path) -> Path:
    """The registry of the runs folder that holds `run`: where `tunelab serve --root R` (R/runs) and
    its dashboard keep their records."""
    final = find_final(run)
    run_dir = run_dir_of(final) if final is not None else None
    if run_dir is None:
        raise TunelabError(
            f"{run}: not inside a runs folder, so there is no registry to store samples in",
            fix="pass --db PATH (e.g. <serve root>/runs/registry.sqlite)",
        )
    return registry_path(run_dir.parent)


def read_prompts(path: str | Path) -> list[Messages]:
    """Each row's conversation (`prompt` as text or messages, `messages`, `conversations`, alpaca's
    `instruction`), read as `predict` reads its rows; a final assistant turn is left out."""
    return [item.chat() for item in read_inputs(path, Columns(), generative=True)]


# -- generation ------------------------------------------------------------------------------------


def _as_model_sees(trained: Trained, messages: Messages) -> Messages:
    # The run's data.system_prompt was in every training conversation without one, as generate adds it.
    system = trained.info.get("system_prompt")
    if system and not any(m["role"] == "system" for m in messages):
        return [{"role": "system", "content": system}, *messages]
    return messages


def generate_samples(
    trained: Trained, model: str, prompts: list[Messages], settings: Settings
) -> list[Sample]:
    """settings.n answers to every prompt from one model, sample k drawn under seed + k."""
    if not trained.generative:
        raise TunelabError(f"{model}: a {trained.task} model scores text, it does not generate it")
    if not getattr(trained.tokenizer, "chat_template", None):
        raise TunelabError(
            f"{model}: its tokenizer has no chat template, so it cannot answer a conversation",
            fix="sample chat models: a run (sft, preference) or a base that ships its own chat template",
        )
    encoded = [encode_prompt(trained.model, trained.tokenizer, _as_model_sees(trained, p)) for p in prompts]
    device = next(trained.model.parameters()).device
    samples: list[Sample] = []
    for k in range(settings.n):
        seed = settings.seed + k
        torch.manual_seed(seed)
        with trained.precision.autocast(device.type):
            # top_k 0: no top-k cut, so top_p means what it says (as the server's sampling does)
            answers = generate_batch(
                trained.model,
                trained.tokenizer,
                encoded,
                max_new_tokens=settings.max_new_tokens,
                temperature=settings.temperature,
                batch_size=settings.batch_size,
                top_p=settings.top_p,
                top_k=0,
            )
        samples += [
            Sample(p, model, a, settings.temperature, settings.top_p, settings.max_new_tokens, seed)
            for p, a in zip(prompts, answers, strict=True)
        ]
    return samples


def _samples_of(spec: str, prompts: list[Messages], settings: Settings) -> list[Sample]:
    trained = to_best_device(load_run_or_base(spec))
    try:
        return generate_samples(trained, model_id(spec), prompts, settings)
    finally:
        del trained
        gc.collect()  # the next model loads into the memory this one held


def sample(
    run: str | Path,
    prompts_file: str | Path,
    *,
    against: str | None = None,
    settings: Settings | None = None,
    database: Path | None = None,
) -> Sampled:
    """Generate, store and pair: n answers per prompt from `run` (and from `against`)."""
    settings = settings or Settings()
    settings.check()
    database = database or default_database(run)
    rows = read_prompts(prompts_file)
    # A prompt given twice is sampled once: its answers are one draw, not two prompts' worth.
    prompts = list({repr(p): p for p in rows}.values())
    specs = [str(run)] + ([against_spec(run, against)] if against else [])
    models = [model_id(spec) for spec in specs]
    if len(set(models)) < len(models):
        raise TunelabError(f"--against names the same model as RUN ({models[0]})", fix="compare two models")
    samples = [s for spec in specs for s in _samples_of(spec, prompts, settings)]
    store = FeedbackStore(database)
    store.add_samples(samples)
    pairs = store.add_pairs(pair_samples(samples))
    return Sampled(database, models, len(prompts), len(rows) - len(prompts), len(samples), len(pairs))
