"""The end of a study: best.yaml (the winning recipe, ready for `tunelab train`), the best trial's test
score (computed once, here), study.json and a self-contained study.html.

Choosing among trials on the validation split makes the best validation score an optimistic
estimate of that recipe; the report says so, and keeps the test score apart from it.
"""

from __future__ import annotations

import base64
import io
import json
import warnings
from pathlib import Path
from typing import Any

import jinja2
import optuna
import yaml

from tunelab.config.search import SearchConfig
from tunelab.files import write_text_atomic
from tunelab.tuning import space

HONESTY = (
    "The best trial was chosen by its validation score, so that score is biased upward: it is the best "
    "of {n} trials on the same validation data ({complete} ran to the end). The test score below was "
    "computed once, for the best trial only, after the search; it is the estimate to quote."
)


def finish(
    study: optuna.Study, raw: dict[str, Any], search: SearchConfig, folder: Path, test_file: str | None
) -> dict:
    """best.yaml, the test score, study.json and study.html; returns study.json's content."""
    trials = [_trial_row(t) for t in study.get_trials(deepcopy=False)]
    complete = [t for t in study.get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.COMPLETE]
    summary: dict[str, Any] = {
        "study": study.study_name,
        "metric": search.metric,
        "direction": "minimize" if search.minimize else "maximize",
        "trials": trials,
        "states": _count_states(trials),
        "best": None,
        "start": _starting_trial(trials),
    }
    if complete:
        best = study.best_trial
        best_raw = _best_recipe(raw, best, search, study.study_name, test_file)
        write_text_atomic(folder / "best.yaml", yaml.safe_dump(best_raw, sort_keys=False, allow_unicode=True))
        summary["best"] = {
            **_trial_row(best),
            "best_yaml": str(folder / "best.yaml"),
            "test": _test_score(best.user_attrs.get("run_dir"), test_file, raw),
            "baselines": _baselines(best.user_attrs.get("run_dir")),
        }
    write_text_atomic(folder / "study.json", json.dumps(summary, indent=2, default=str) + "\n")
    honesty = HONESTY.format(n=len(trials), complete=len(complete))
    html = _TEMPLATE.render(s=summary, honesty=honesty, plots=_plots(study))
    write_text_atomic(folder / "study.html", html)
    return summary


def _trial_row(trial: optuna.trial.FrozenTrial) -> dict[str, Any]:
    reason = trial.user_attrs.get("reason") or trial.system_attrs.get("fail_reason")
    start, end = trial.datetime_start, trial.datetime_complete
    took = (end - start).total_seconds() if start is not None and end is not None else None
    return {
        "number": trial.number,
        "state": trial.state.name.lower(),
        "value": trial.value,
        "values": trial.user_attrs.get("values", trial.params),
        "steps": trial.user_attrs.get("steps"),
        "run_dir": trial.user_attrs.get("run_dir"),
        "reason": reason,
        "wall_s": took,
        "starting_recipe": bool(trial.user_attrs.get("starting_recipe")),
    }


def _count_states(trials: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for trial in trials:
        counts[trial["state"]] = counts.get(trial["state"], 0) + 1
    return counts


def _starting_trial(trials: list[dict[str, Any]]) -> dict[str, Any] | None:
    return next((t for t in trials if t["starting_recipe"]), None)


def _best_recipe(
    raw: dict[str, Any],
    best: optuna.trial.FrozenTrial,
    search: SearchConfig,
    study: str,
    test_file: str | None,
) -> dict[str, Any]:
    values = best.user_attrs.get("values") or {**best.params, **space.tied_values(search, best.params)}
    out = space.apply(raw, values)
    out["name"] = f"{study}-best"
    if test_file:
        out["data"]["test"] = test_file  # the final run scores the test split, as the recipe asked
    return out


def _baselines(run_dir: str | None) -> dict[str, Any]:
    """The base model's scores (zero- and few-shot) the best trial's run recorded, to set the search's
    gain beside what no training at all gives."""
    path = Path(run_dir) / "summary.json" if run_dir else None
    if path is None or not path.is_file():
        return {}
    recorded = json.loads(path.read_text(encoding="utf-8")).get("baselines") or {}
    return {
        name: {k: v for k, v in scores.items() if isinstance(v, int | float)}
        for name, scores in recorded.items()
    }


def _test_score(run_dir: str | None, test_file: str | None, raw: dict[str, Any]) -> dict[str, Any] | None:
    """The best trial's model on the recipe's test file (with the recipe's eval.metrics): once, after
    the search chose it, so nothing was chosen on it."""
    if not run_dir or not test_file:
        return None
    from tunelab.evaluation.target import evaluate_file, load_target

    metrics = tuple(raw.get("eval", {}).get("metrics", []))
    scores = evaluate_file(load_target(run_dir), test_file, metrics=metrics)["metrics"]
    return {"test_" + k.removeprefix("eval_"): v for k, v in scores.items() if isinstance(v, int | float)}


def _plots(study: optuna.Study) -> dict[str, str]:
    """Optuna's own matplotlib plots (history, importances, intermediate values), as PNGs."""
    from optuna.visualization import matplotlib as plots

    out = {}
    makers: dict[str, Any] = {
        "history": plots.plot_optimization_history,
        "importances": plots.plot_param_importances,
        "intermediate": plots.plot_intermediate_values,
    }
    for name, make in makers.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "experimental" notes from optuna's plotting module
                axes = make(study)
        except (ValueError, RuntimeError, ZeroDivisionError):  # too few trials for this plot
            continue
        figure = axes.figure if hasattr(axes, "figure") else axes.flat[0].figure
        figure.set_size_inches(7, 3.6)
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
        out[name] = base64.b64encode(buffer.getvalue()).decode("ascii")
        import matplotlib.pyplot as plt

        plt.close(figure)
    return out


_TEMPLATE = jinja2.Environment(autoescape=True, undefined=jinja2.ChainableUndefined).from_string(
    """<!doctype html><html><head><meta charset="utf-8"><title>study {{ s.study }}</title>
<style>body{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;padding:0 1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px;text-align:left}
.note{background:#fff6dd;padding:.6em 1em;border-left:4px solid #e0b000}</style></head><body>
<h1>Study {{ s.study }}</h1>
<p>Metric <b>{{ s.metric }}</b> ({{ s.direction }}); trials: {% for k, v in s.states.items() %}{{ v }} {{ k }}{% if not loop.last %}, {% endif %}{% endfor %}.</p>
<p class="note">{{ honesty }}</p>
{% if s.best %}<h2>Best trial: {{ s.best.number }}</h2>
<table><tr><th></th><th>{{ s.metric }} (validation, used to choose)</th><th>values</th></tr>
<tr><td>best (trial {{ s.best.number }})</td><td>{{ '%.4f' % s.best.value }}</td><td>{{ s.best["values"] }}</td></tr>
{% if s.start %}<tr><td>starting recipe (trial {{ s.start.number }})</td><td>{% if s.start.value is not none %}{{ '%.4f' % s.start.value }}{% else %}{{ s.start.state }}{% endif %}</td><td>{{ s.start["values"] }}</td></tr>{% endif %}
</table>
{% if s.best.baselines %}<h3>The base model, untrained (the best trial's baselines, on its validation split)</h3>
<table>{% for name, scores in s.best.baselines.items() %}<tr><td>{{ name }}</td><td>{% for k, v in scores.items() %}{{ k }} {{ '%.4f' % v }}{% if not loop.last %}, {% endif %}{% endfor %}</td></tr>{% endfor %}</table>{% endif %}
{% if s.best.test %}<h3>Test score of the best trial (computed once, after the search)</h3>
<table>{% for k, v in s.best.test.items() %}<tr><td>{{ k }}</td><td>{{ '%.4f' % v }}</td></tr>{% endfor %}</table>
{% else %}<p>No test file in the recipe: no unbiased score was computed.</p>{% endif %}
<p>Best recipe: <code>{{ s.best.best_yaml }}</code> (<code>tunelab train {{ s.best.best_yaml }}</code>);
its run folder: <code>{{ s.best.run_dir }}</code> (baselines in its report.html).</p>{% endif %}
{% for name, png in plots.items() %}<h2>{{ name }}</h2><img src="data:image/png;base64,{{ png }}">{% endfor %}
<h2>Trials</h2><table><tr><th>#</th><th>state</th><th>value (a pruned trial's: its last validation pass)</th><th>values</th><th>steps</th><th>seconds</th><th>why</th><th>run</th></tr>
{% for t in s.trials %}<tr><td>{{ t.number }}{% if t.starting_recipe %} (start){% endif %}</td><td>{{ t.state }}</td>
<td>{% if t.value is not none %}{{ '%.4f' % t.value }}{% endif %}</td><td>{{ t["values"] }}</td><td>{{ t.steps if t.steps is not none else '' }}</td>
<td>{% if t.wall_s is not none %}{{ '%.0f' % t.wall_s }}{% endif %}</td><td>{{ t.reason or '' }}</td><td>{{ t.run_dir or '' }}</td></tr>{% endfor %}
</table></body></html>"""
)
