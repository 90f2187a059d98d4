"""report.html: one self-contained page that says what a run did, what it cost and whether it helped.

Everything is read back from the run folder (summary.json, metrics.jsonl, data/report.json and,
when present, eval.json), so a report can be written for any run, old or failed, at any time.
The page needs no network: plots are inline PNG data URIs and the only style is an inline <style>,
so it can be mailed, archived or opened on an air-gapped machine exactly as it was written.
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

import jinja2
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tunelab.config.directions import better
from tunelab.errors import TunelabError
from tunelab.files import (
    DATA_REPORT_FILE,
    EVAL_FILE,
    GENERATIONS_FILE,
    METRICS_FILE,
    RECIPE_FILE,
    REPORT_FILE,
    read_generation_rows,
    write_text_atomic,
)
from tunelab.runs.report_safety import bias_section, canaries_section, privacy_section, screen_rows
from tunelab.runs.report_safety import by_split as _by_split
from tunelab.runs.report_safety import fmt as _fmt
from tunelab.runs.rundir import read_summary
from tunelab.runs.summary import RunSummary

SECTIONS = (
    "summary",
    "loss",
    "lr",
    "baselines",
    "examples",
    "confusion",
    "entities",
    "forgetting",
    "privacy",
    "canaries",
    "bias",
    "data",
    "cost",
)
# A run has these only when it did that work (its task's own scores, an opt-in audit): without it they are
# left out, links and all. Every other section is on every report and says so when its data is missing.
OPTIONAL = frozenset({"examples", "confusion", "entities", "privacy", "canaries", "bias"})
EXAMPLES_SHOWN = 3  # answers shown before and after (eval.metrics runs), a seeded draw
LOWER_IS_BETTER = ("loss", "perplexity", "error")  # metric name fragments; everything else is higher-better
Rows = list[tuple[str, str]]


def write_report(run_dir: str | Path) -> Path:
    """Write <run_dir>/report.html (temp file, then rename) and return its path."""
    run_dir = Path(run_dir)
    summary = read_summary(run_dir)
    metrics = _read_jsonl(run_dir / METRICS_FILE)
    data = _read_json(run_dir / DATA_REPORT_FILE)
    evaluation = _read_json(run_dir / EVAL_FILE) or {}
    page = {
        "summary": _summary_section(summary),
        "loss": _loss_plot(metrics),
        "lr": _lr_plot(metrics),
        "baselines": _baselines_section(summary, evaluation),
        "examples": _examples_section(run_dir),
        "confusion": _confusion_section(evaluation),
        "entities": _entities_section(evaluation),
        "forgetting": _forgetting_section(evaluation),
        "privacy": privacy_section(summary),
        "canaries": canaries_section(evaluation),
        "bias": bias_section(evaluation),
        "data": _data_section(data, summary.examples) if data else None,
        "cost": _cost_section(summary, metrics),
    }
    shown = [section for section in SECTIONS if section not in OPTIONAL or page[section]]
    html = _TEMPLATE.render(title=summary.name or run_dir.name, sections=shown, **page)
    path = run_dir / REPORT_FILE
    write_text_atomic(path, html)
    return path


# ---------------------------------------------------------------------------------------------
# reading the run folder


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None  # old runs have no data/report.json; eval.json exists only after `tunelab eval`
    try:
        return dict(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:  # TypeError: valid JSON, but not an object
        raise TunelabError(f"{path} is not a JSON object ({exc})") from exc


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue  # a run killed mid-append leaves a torn last line; the rest is still good
    return [row for row in rows if isinstance(row, dict) and "step" in row]


def _series(metrics: list[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(row["step"], row[key]) for row in metrics if isinstance(row.get(key), int | float)]
    return [p[0] for p in points], [p[1] for p in points]


# ---------------------------------------------------------------------------------------------
# formatting


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def _better(metric: str, change: float) -> str:
    """CSS class for a change: lower is better for losses, higher for everything else."""
    if change == 0:
        return ""
    direction = better(metric)  # the one table of directions; a name outside it by its fragments
    lower = direction == "lower" if direction else any(part in metric for part in LOWER_IS_BETTER)
    return "good" if (change < 0) == lower else "bad"


# ---------------------------------------------------------------------------------------------
# sections: each returns a small dict or list for the template, or None when there is no data


def _summary_section(summary: RunSummary) -> dict[str, Any]:
    rows: Rows = [
        ("name", _fmt(summary.name or None)),
        ("task", _fmt(summary.task or None)),
        ("method", _fmt(summary.method or None)),
        ("base model", _fmt(summary.model or None)),
        ("run folder", _fmt(summary.run_dir or None)),
    ]
    steps = _fmt(summary.steps)
    if summary.total_steps:
        steps += f" of {_fmt(summary.total_steps)}"
    rows += [
        ("steps", steps),
        ("stopped early", _fmt(summary.stopped_early)),
        ("started", _fmt(summary.started_at or None)),
        ("finished", _fmt(summary.finished_at)),
        ("examples after tokenisation", _fmt(summary.examples or None)),
    ]
    return {"rows": rows, "status": summary.status, "error": summary.error, "notes": summary.notes}


def _baselines_section(summary: RunSummary, evaluation: dict[str, Any]) -> dict[str, Any] | None:
    """Fine-tuned score beside each baseline: eval.json's baselines, else summary's before/after test."""
    if evaluation.get("baselines") and evaluation.get("fine_tuned"):
        baselines = {name.replace("_", "-"): dict(s) for name, s in evaluation["baselines"].items()}
        tuned = dict(evaluation["fine_tuned"])
    else:
        baselines = {"before training": dict(summary.before_training)}
        for name, scores in summary.baselines.items():  # zero-/few-shot of the base model
            baselines[name.replace("_", "-")] = dict(scores)
        tuned = dict(summary.metrics)
    rows = [
        (metric, name, f"{before:.3f}", f"{tuned[metric]:.3f}", f"{tuned[metric] - before:+.3f}")
        for name, scores in baselines.items()
        for metric, before in scores.items()
        if isinstance(before, int | float) and isinstance(tuned.get(metric), int | float)
    ]
    if not rows:
        return None
    graded = [(*row, _better(row[0], float(row[4]))) for row in rows]
    return {"rows": graded, "plot": _baselines_plot(baselines, tuned, sorted({r[0] for r in rows}))}


def _confusion_section(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    matrix = evaluation.get("confusion_matrix")
    if not matrix:
        return None
    labels = [str(label) for label in evaluation.get("labels") or []]
    if len(labels) != len(matrix):
        labels = [str(i) for i in range(len(matrix))]  # better unnamed than misnamed
    return {"plot": _confusion_plot(matrix, labels), "labels": labels}


def _examples_section(run_dir: Path) -> list[dict[str, str]] | None:
    """A few answers before (zero-shot) and after fine-tuning, drawn with the run's seed: not the best."""
    from tunelab.evaluation.generative import shown_examples  # the draw the terminal showed

    rows = read_generation_rows(run_dir / GENERATIONS_FILE)
    if not rows:
        return None
    recipe = (
        yaml.safe_load((run_dir / RECIPE_FILE).read_text(encoding="utf-8"))
        if (run_dir / RECIPE_FILE).is_file()
        else {}
    )
    seed = int(((recipe or {}).get("train") or {}).get("seed", 42))  # the draw the terminal showed
    shown = []
    for i in shown_examples(EXAMPLES_SHOWN, len(rows), seed):
        row = rows[i]
        question = row["prompt"][-1]["content"] if row.get("prompt") else ""
        shown.append(
            {
                "source": str(row.get("source") or ""),
                "question": question,
                "reference": str(row.get("reference")),
                "before": str(row.get("zero_shot", "—")),
                "after": str(row.get("fine_tuned", "—")),
            }
        )
    return shown


def _entities_section(evaluation: dict[str, Any]) -> list[list[str]] | None:
    """token_classify: entity precision, recall and F1 per type, then micro-averaged (eval.json)."""
    entities = evaluation.get("entities")
    if not entities:
        return None
    rows = [
        [name, _fmt(s["precision"]), _fmt(s["recall"]), _fmt(s["f1"]), str(s["support"])]
        for name, s in entities["per_type"].items()
    ]
    micro = entities["micro"]
    return [*rows, ["micro", _fmt(micro["precision"]), _fmt(micro["recall"]), _fmt(micro["f1"]), ""]]


def _forgetting_section(evaluation: dict[str, Any]) -> dict[str, Any] | None:
    check = evaluation.get("forgetting")
    if not check:
        return None
    metric = str(check.get("metric", "score"))
    rows: Rows = [
        ("reference metric", metric),
        ("before fine-tuning", _fmt(check.get("before"))),
        ("after fine-tuning", _fmt(check.get("after"))),
        ("change", f"{check['change']:+.4f}" if isinstance(check.get("change"), int | float) else "—"),
        ("tolerance", _fmt(check.get("tolerance"))),
    ]
    return {"rows": rows, "warning": bool(check.get("warning")), "metric": metric}


def _data_section(report: dict[str, Any], trained: dict[str, Any] | None = None) -> dict[str, Any]:
    """`trained`: summary.json's examples per split, after tokenisation (and packing: rows), which can
    be fewer than the rows kept by cleaning. Both are shown, each under its own name."""
    kept, trained = report.get("records", {}), trained or {}
    files = report.get("splits", {})
    held_out = {s: {"file": "(held out from train)"} for s in kept if s not in files}
    splits = {
        split: {**row, "kept": kept.get(split), "trained": trained.get(split)}
        for split, row in {**files, **held_out}.items()
    }
    dedup, leakage, labels = (report.get(key) or {} for key in ("dedup", "leakage", "labels"))
    removed = [
        (f"{kind} duplicates removed", _fmt(dedup.get(f"{kind}_removed"))) for kind in ("exact", "near")
    ]
    policy = {"policy": _fmt(leakage.get("policy")), "removed": _fmt(leakage.get("removed_from_train"))}
    return {
        "splits": _by_split(splits, ("file", "format", "rows", "bad_rows", "kept", "trained")),
        "pii": _by_split(report.get("pii", {}), ("policy", "hits", "rows_with_pii", "rows_dropped")),
        "dedup": removed if dedup else None,
        "leakage": policy if leakage else None,
        "overlap": _by_split(leakage.get("overlap", {}), ("exact", "near")),
        "labels": [(str(label), _fmt(n)) for label, n in labels.get("counts", {}).items()],
        "imbalance": _fmt(labels.get("imbalance_ratio"), 2),
        "warnings": [str(w) for w in report.get("warnings", [])],
        **screen_rows(report.get("content_screen") or {}),
    }


def _cost_section(summary: RunSummary, metrics: list[dict[str, Any]]) -> Rows | None:
    wall, tokens, mem = summary.wall_s, summary.tokens, summary.peak_mem_mb
    trainable, total = summary.trainable_params, summary.total_params
    rows: Rows = []
    if wall:
        rows.append(("wall time", _duration(wall)))
    if tokens:
        rows.append(("tokens trained on", _fmt(int(tokens))))
    if wall and tokens:  # the whole run, evaluations and saving included: what the user waited for
        rows.append(("tokens / s (whole run)", f"{tokens / wall:,.0f}"))
    _, speeds = _series(metrics, "tokens_per_s")
    if speeds:
        rows.append(("tokens / s (training, median)", f"{sorted(speeds)[len(speeds) // 2]:,.0f}"))
    if mem:
        rows.append(("peak memory", f"{mem / 1024:.2f} GiB" if mem >= 1024 else f"{mem:.0f} MiB"))
    if trainable and total:
        share = f"{_fmt(int(trainable))} of {_fmt(int(total))} ({100 * trainable / total:.2f}%)"
        rows.append(("trainable parameters", share))
    return rows or None


# ---------------------------------------------------------------------------------------------
# plots: each returns a base64 PNG. Figure objects (not pyplot) leave no global state behind and
# are freed with their last reference, so nothing needs closing and no backend is switched.


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    FigureCanvasAgg(fig).print_png(buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _loss_plot(metrics: list[dict[str, Any]]) -> str | None:
    train, val = _series(metrics, "loss"), _series(metrics, "val_loss")
    if not train[0] and not val[0]:
        return None
    fig = Figure(figsize=(8, 3.4), layout="constrained")
    ax = fig.add_subplot()
    if train[0]:  # dots too while they are few: a run shorter than train.log_every logs one point
        dots = "o" if len(train[0]) <= 50 else ""
        ax.plot(*train, label="train loss", color="#4c72b0", marker=dots, markersize=3)
    if val[0]:
        ax.plot(*val, label="validation loss", color="#dd8452", marker="o", markersize=4)
    values = train[1] + val[1]
    if min(values) > 0 and max(values) / min(values) > 100:  # a loss falling 100x reads better on a log axis
        ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _png(fig)


def _lr_plot(metrics: list[dict[str, Any]]) -> str | None:
    steps, lrs = _series(metrics, "lr")
    if not steps:
        return None
    fig = Figure(figsize=(8, 2.6), layout="constrained")
    ax = fig.add_subplot()
    ax.plot(steps, lrs, color="#55a868")
    ax.set(xlabel="step", ylabel="learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    return _png(fig)


def _baselines_plot(baselines: dict[str, dict[str, Any]], tuned: dict[str, Any], metrics: list[str]) -> str:
    # One panel per metric: losses and accuracies live on different scales.
    fig = Figure(figsize=(min(12.0, 1.2 + 2.8 * len(metrics)), 3.0), layout="constrained")
    for i, metric in enumerate(metrics):
        ax = fig.add_subplot(1, len(metrics), i + 1)
        names = [name for name, s in baselines.items() if isinstance(s.get(metric), int | float)]
        values = [float(baselines[name][metric]) for name in names] + [float(tuned[metric])]
        bars = ax.bar([*names, "fine-tuned"], values, color=["#b0b0b0"] * len(names) + ["#4c72b0"])
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
        ax.set_title(metric, fontsize=10)
        ax.tick_params(axis="x", labelsize=8, rotation=15)
        ax.margins(y=0.15)
    return _png(fig)


def _confusion_plot(matrix: list[list[float]], labels: list[str]) -> str:
    n = len(labels)
    size = min(12.0, max(4.0, 1.5 + 0.6 * n))
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set(xlabel="predicted", ylabel="true")
    peak = max((max(row) for row in matrix if row), default=0)
    if n <= 20:  # beyond that the numbers no longer fit in the cells
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                color = "white" if count > peak / 2 else "black"
                ax.text(j, i, _fmt(count, 2), ha="center", va="center", color=color, fontsize=8)
    return _png(fig)


_TEMPLATE = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
    """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{{ title }} - tunelab report</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;max-width:1000px;margin:0 auto;padding:1rem 1.5rem;color:#222}
nav a{margin-right:.9rem}
section{border-top:1px solid #ddd;padding:.4rem 0 1rem}
h1{margin-bottom:.2rem} h2{font-size:1.15rem} h3{font-size:1rem;margin:.8rem 0 .3rem}
table{border-collapse:collapse;margin:.3rem 0}
td,th{border:1px solid #ddd;padding:.2rem .6rem;text-align:left;vertical-align:top}
th{background:#f5f5f5} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;height:auto}
.missing{color:#777;font-style:italic}
.status{padding:.1rem .5rem;border-radius:.3rem;background:#eee}
.status-completed{background:#d7f0dd} .status-failed{background:#f8d7da} .status-running{background:#fff3cd}
.error,.warning{background:#f8d7da;border-left:4px solid #c0392b;padding:.5rem .8rem}
.error{white-space:pre-wrap}
.warning{background:#fff3cd;border-color:#e0a800;margin:.4rem 0}
.good{color:#1e7b34;font-weight:600} .bad{color:#c0392b;font-weight:600}
</style></head><body>
{%- macro kv(rows) %}<table>{% for k, v in rows %}<tr><th>{{ k }}</th><td>{{ v }}</td></tr>{% endfor %}</table>{% endmacro %}
{%- macro grid(head, rows) %}<table><tr>{% for h in head %}<th>{{ h }}</th>{% endfor %}</tr>{% for row in rows %}<tr>
{%- for cell in row %}<td{% if loop.index > 1 and cell[:1] in "0123456789+-—" %} class="num"{% endif %}>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>{% endmacro %}
{%- macro img(data, alt) %}<img alt="{{ alt }}" src="data:image/png;base64,{{ data }}">{% endmacro %}
{%- macro missing(what) %}<p class="missing">{{ what }} not available for this run.</p>{% endmacro %}
<h1>{{ title }}</h1>
<nav>{% for id in sections %}<a href="#{{ id }}">{{ id }}</a>{% endfor %}</nav>

<section id="summary"><h2>Run</h2>
<p>status: <span class="status status-{{ summary.status }}">{{ summary.status }}</span></p>
{% if summary.error %}<div class="error">error: {{ summary.error }}</div>{% endif %}
{{ kv(summary.rows) }}
{% if summary.notes %}<h3>notes</h3><ul>{% for n in summary.notes %}<li>{{ n }}</li>{% endfor %}</ul>{% endif %}
</section>

<section id="loss"><h2>Loss</h2>
{% if loss %}{{ img(loss, "train and validation loss by step") }}{% else %}{{ missing("Loss curves are") }}{% endif %}</section>

<section id="lr"><h2>Learning rate</h2>
{% if lr %}{{ img(lr, "learning rate by step") }}{% else %}{{ missing("The learning-rate schedule is") }}{% endif %}</section>

<section id="baselines"><h2>Baselines vs fine-tuned</h2>
{% if baselines %}<table><tr><th>metric</th><th>baseline</th><th>baseline score</th><th>fine-tuned</th><th>difference</th></tr>
{% for metric, name, before, after, change, cls in baselines.rows %}<tr><td>{{ metric }}</td><td>{{ name }}</td>
<td class="num">{{ before }}</td><td class="num">{{ after }}</td><td class="num {{ cls }}">{{ change }}</td></tr>
{% endfor %}</table>
{{ img(baselines.plot, "baseline and fine-tuned scores") }}
{% else %}{{ missing("A baseline to compare against is") }}{% endif %}</section>

{% if examples %}<section id="examples"><h2>Answers before and after</h2>
{% for e in examples %}<h3>{{ e.source }}</h3>{{ kv([("asked", e.question), ("expected", e.reference),
("before (base model, zero-shot)", e.before), ("after (fine-tuned)", e.after)]) }}{% endfor %}
<p>A seeded draw from generations.jsonl, which holds every answer.</p></section>{% endif %}

{% if confusion %}<section id="confusion"><h2>Confusion matrix</h2>
{{ img(confusion.plot, "confusion matrix over " ~ confusion.labels | join(", ")) }}</section>{% endif %}

{% if entities %}<section id="entities"><h2>Entities</h2>
{{ grid(["type", "precision", "recall", "F1", "entities"], entities) }}</section>{% endif %}

<section id="forgetting"><h2>Forgetting</h2>
{% if forgetting %}{% if forgetting.warning %}<div class="warning" id="forgetting-warning">Warning: {{ forgetting.metric }} on the
reference set changed by more than the tolerance: the model may have lost some of what it knew before fine-tuning.</div>{% endif %}
{{ kv(forgetting.rows) }}
{% else %}{{ missing("A forgetting check is") }}{% endif %}</section>

{% if privacy %}<section id="privacy"><h2>Differential privacy</h2>{{ kv(privacy) }}</section>{% endif %}

{% if canaries %}<section id="canaries"><h2>Memorisation audit</h2>
<p>Exposure of each group's secrets, ranked among {{ canaries.candidates }} random ones (at most
{{ canaries.max }} bits; about 1 to 2 for a secret never seen, as the controls show). Recited: greedy decoding of the
canary's prompt gives its secret.</p>{{ grid(["put in train", "canaries", "mean exposure (bits)", "recited"], canaries.rows) }}
</section>{% endif %}

{% if bias %}<section id="bias"><h2>Bias</h2>
{% for w in bias.warnings %}<div class="warning">{{ w }}</div>{% endfor %}
<h3>identity terms against labels (train)</h3>{% if bias.data %}{{ grid(["subgroup", "rows mentioning it", "label furthest from its overall share", "P(label | subgroup) - P(label)"], bias.data) }}{% else %}<p>No train row mentions a subgroup.</p>{% endif %}
{% if bias.model %}<h3>the fine-tuned model by subgroup ({{ bias.split }})</h3>{{ grid(["subgroup", "rows", "accuracy", "subgroup AUC", "BPSN AUC", "BNSP AUC"], bias.model) }}{% endif %}
</section>{% endif %}

<section id="data"><h2>Data</h2>
{% if data %}{% for w in data.warnings %}<div class="warning">{{ w }}</div>{% endfor %}
{% if data.splits %}<h3>files</h3>{{ grid(["split", "file", "format", "rows read", "bad rows", "kept after cleaning", "examples after tokenisation"], data.splits) }}{% endif %}
{% if data.dedup %}<h3>duplicates</h3>{{ kv(data.dedup) }}{% endif %}
{% if data.pii %}<h3>personal data</h3>{{ grid(["split", "policy", "hits by kind", "rows with PII", "rows dropped"], data.pii) }}{% endif %}
{% if data.leakage %}<h3>leakage into held-out splits</h3>
<p>policy: {{ data.leakage.policy }}; removed from train: {{ data.leakage.removed }}</p>
{% if data.overlap %}{{ grid(["split", "exact overlap", "near overlap"], data.overlap) }}{% endif %}{% endif %}
{% if data.screen %}<h3>content screen</h3>{{ grid(["split", "scorer", "threshold", "action", "flagged rows", "flagged share", "dropped"], data.screen) }}
{% if data.screen_flagged %}{{ grid(["split", "row", "score", "where"], data.screen_flagged) }}{% endif %}{% endif %}
{% if data.labels %}<h3>label balance (train)</h3>
<p>imbalance ratio (largest / smallest class): {{ data.imbalance }}</p>{{ kv(data.labels) }}{% endif %}
{% else %}{{ missing("A data report (data/report.json) is") }}{% endif %}</section>

<section id="cost"><h2>Cost</h2>
{% if cost %}{{ kv(cost) }}{% else %}{{ missing("Cost figures are") }}{% endif %}</section>
</body></html>
"""
)
