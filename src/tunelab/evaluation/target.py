"""`tunelab eval`: score a run, a final/ folder or a base model on a data file.

A run's final/ folder says how to rebuild the model (tunelab.json: task, method, base model);
`tunelab.models.restore.load_trained` does it, as it does for export and inference.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tunelab.config import ModelConfig
from tunelab.data.formats import load_split
from tunelab.data.readers import read_file
from tunelab.data.records import Chat
from tunelab.data.tagged import check_tags_known
from tunelab.data.templates import ensure_chat_template
from tunelab.data.tokenize import LengthPolicy
from tunelab.errors import DataError, TunelabError
from tunelab.evaluation import generative
from tunelab.evaluation import metrics as m
from tunelab.evaluation.generative import GENERATIVE
from tunelab.evaluation.settings import DataSettings
from tunelab.evaluation.tagging import entity_scores, headline, predicted_tags
from tunelab.models.load import load_model
from tunelab.models.precision import COMPUTE_DTYPES, Precision
from tunelab.models.restore import find_final, load_trained
from tunelab.tasks.registry import task_spec, tasks_where
from tunelab.training.loop import eval_batches
from tunelab.training.objectives import collate_for
from tunelab.training.precision import make_accelerator


@dataclass
class Target:
    model: Any
    tokenizer: Any
    task: str
    label_map: dict[str, int] | None
    run_dir: Path | None  # where eval.json goes when the target is a run
    precision: Precision  # a run's own (unless chosen otherwise): its numbers then reproduce
    recipe_dir: Path | None = None  # where the training recipe.yaml is (a run, or an export's copy)


def load_target(target: str, task: str | None = None, *, precision: str = "trained") -> Target:
    path = Path(target)
    if find_final(path) is not None or (path / "summary.json").is_file():
        # A run (a run without final/ is an error that says why) or final/.
        trained = load_trained(path, precision=precision)
        return Target(
            trained.model,
            trained.tokenizer,
            trained.task,
            trained.label_map,
            trained.run_dir,
            trained.precision,
            trained.recipe_dir,
        )
    chosen = task or "sft"  # a base model: a Hub id or a plain model folder
    head = task_spec(chosen).head
    if head.outputs != "vocabulary":  # a new head (classes, tags, a score) is untrained in a base model
        raise TunelabError(
            f"{target} is a base model: {head.description} needs a trained head",
            fix="evaluate a run or its final/ folder",
        )
    compute = "fp32" if precision == "trained" else precision  # a base model trained in nothing yet
    weights = COMPUTE_DTYPES[compute]  # nothing trains: weights in the compute dtype, as a frozen base
    loaded = load_model(ModelConfig(name=target), chosen, dtype=weights)
    return Target(loaded.model, loaded.tokenizer, chosen, None, None, Precision(compute, weights))


def evaluate_file(
    target: Target,
    data_file: str,
    *,
    metrics: tuple[str, ...] = (),
    settings: DataSettings | None = None,
    batch_size: int = 16,
    max_new_tokens: int = 128,
) -> dict[str, Any]:
    """Score `data_file`; `settings` default to the run's own (DataSettings.of_run)."""
    settings = settings or DataSettings.of_run(target.recipe_dir)
    spec = task_spec(target.task)
    if not spec.evaluable:
        raise TunelabError(
            f"tunelab eval scores a data file with a {', '.join(tasks_where(lambda t: t.evaluable))} model; "
            f"a {target.task} run's scores are its validation metrics",
            fix="see them in the run's summary.json (tunelab runs show RUN) or its report.html",
        )
    # Wrapped as training wrapped it (autocast, outputs back to float32), so a run's scores reproduce.
    accelerator = make_accelerator(target.precision.mixed_precision)
    model = accelerator.prepare_model(target.model, evaluation_mode=True)
    kind = spec.record_kinds[0]
    references, settings = _references(target, data_file, settings, metrics)
    records = load_split(
        data_file, fmt=settings.format, columns=settings.columns, kind=kind, on_error="fail"
    ).records
    examples = _tokenized(target, records, LengthPolicy(settings.max_seq_len), str(data_file))
    objective = spec.objective(None, model, None)  # an evaluable task's loss takes no recipe settings
    pad_id = target.tokenizer.pad_token_id

    def batches() -> Any:
        return eval_batches(examples, batch_size, pad_id, accelerator, collate_for(target.task))

    result: dict[str, Any] = {
        "data": str(data_file),
        "task": target.task,
        "examples": len(examples),
        "max_seq_len": settings.max_seq_len,
        **({"references": list(settings.references)} if settings.references else {}),
    }
    result["metrics"] = m.evaluate(model, batches(), objective, target.task, accelerator, prefix="eval")
    if spec.head.word_level:  # a tagger: entity scores
        result.update(_tagging_scores(target, model, examples, batch_size, accelerator, result["metrics"]))
    if spec.head.labels_examples:  # a classifier: the per-class report
        assert target.label_map is not None
        names = sorted(target.label_map, key=target.label_map.__getitem__)
        y_true, y_pred = m.predicted_labels(model, batches(), accelerator)
        result["classification"] = m.classification_scores(y_true, y_pred, names)
        result["confusion_matrix"], result["labels"] = result["classification"]["confusion_matrix"], names
    elif any(name in GENERATIVE for name in metrics):
        with target.precision.autocast(accelerator.device.type):
            given = references.per_row if references is not None else None
            generated, rows = _generative(model, target.tokenizer, records, metrics, max_new_tokens, given)
        result["metrics"].update(generated)
        result["generations"] = rows  # written beside the scores, one line per example
    return result


def _tokenized(target: Target, records: list[Any], policy: LengthPolicy, data_file: str) -> list[Any]:
    """The file's records tokenised as the target's task trained on them."""
    spec = task_spec(target.task)
    if spec.head.word_level:
        assert target.label_map is not None
        check_tags_known(records, target.label_map, data_file)
    if spec.chat_template:
        ensure_chat_template(target.tokenizer)
    examples, _ = spec.tokenize(target.tokenizer, records, target.label_map, policy, None)
    return examples


def _tagging_scores(
    target: Target,
    model: Any,
    examples: list[Any],
    batch_size: int,
    accelerator: Any,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """A tagger's entity scores (added to `metrics`) and their per-type table."""
    assert target.label_map is not None
    names = sorted(target.label_map, key=target.label_map.__getitem__)
    pad_id = target.tokenizer.pad_token_id
    gold, predicted = predicted_tags(model, examples, names, batch_size, pad_id, accelerator)
    metrics.update(headline("eval", gold, predicted))
    return {"entities": entity_scores(gold, predicted)}


def _references(
    target: Target, data_file: str, settings: DataSettings, metrics: tuple[str, ...]
) -> tuple[References | None, DataSettings]:
    """The file's reference answers (settings.references), and the settings to read it with: where
    the rows have no answer of their own, the loss is computed against the first reference."""
    if not settings.references:
        return None, settings
    if task_spec(target.task).head.labels_examples or not any(n in GENERATIVE for n in metrics):
        raise TunelabError(
            "--references: reference answers are scored by generative metrics",
            fix="add --metrics rouge (or bleu, chrf, exact_match); classifiers score their labels",
        )
    references = read_references(data_file, settings.references)
    if not _has_own_answers(references.fields, settings):
        rename = {**settings.columns.rename, "completion": settings.references[0]}
        settings = replace(settings, columns=replace(settings.columns, rename=rename))
    return references, settings


def _generative(
    model: Any,
    tokenizer: Any,
    chats: list[Chat],
    metrics: tuple[str, ...],
    max_new_tokens: int,
    given: list[list[str]] | None = None,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Generate each conversation's last assistant turn from what precedes it; score against it, or
    against `given` (several references per row: each example scores its best). Also returns every
    answer beside its prompt and references."""
    asked = generative.ask(chats)
    references: list[str] | list[list[str]] = given if given is not None else [a.reference for a in asked]
    answers = generative.answer(model, tokenizer, asked, max_new_tokens=max_new_tokens)
    rows = [
        {"source": item.source, "prompt": item.prompt, "reference": reference, "answer": text}
        for item, reference, text in zip(asked, references, answers, strict=True)
    ]
    if given is None:  # the rows' own answers: their calls too
        return generative.score_answers(answers, asked, metrics, "eval"), rows
    return generative.score(answers, references, metrics, "eval"), rows


@dataclass(frozen=True)
class References:
    per_row: list[list[str]]  # in file order, as load_split (on_error="fail") keeps the rows
    fields: set[str]  # every field name the rows have


def read_references(data_file: str, names: tuple[str, ...]) -> References:
    """The reference answers in columns `names` (a text, or a list of texts, each), row by row; a row
    missing one is named as file:line, not scored against fewer references in silence."""
    read = read_file(data_file)
    per_row, bad = [], []
    for row in read.rows:
        texts: list[str] = []
        for name in names:
            value = row.fields.get(name) if row.error is None else None
            values = value if isinstance(value, list) else [value]
            if not values or not all(isinstance(v, str) and v.strip() for v in values):
                bad.append(f"{read.path}:{row.where}: --references column {name!r}: no reference text")
            texts += [v for v in values if isinstance(v, str)]
        per_row.append(texts)
    if bad:
        raise DataError(
            f"{read.path}: {len(bad)} missing reference(s); nothing was scored",
            problems=bad[:20],
            fix="name columns every row fills: --references summary1,summary2",
        )
    return References(per_row, fields={name for row in read.rows for name in row.fields})


def _has_own_answers(fields: set[str], settings: DataSettings) -> bool:
    """Whether rows carry an answer besides the references: a conversation, an alpaca output, or the
    completion column (under the run's or the command's renaming)."""
    completion = settings.columns.rename.get("completion", "completion")
    return bool(fields & {"messages", "conversations", "output", completion})
