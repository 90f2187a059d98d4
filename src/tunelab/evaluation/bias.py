"""The bias report (`eval.bias`, classify): identity terms against labels in the data, and against the
fine-tuned classifier's errors on the held-out split.

1. Data, no model needed: for each identity subgroup, how many train rows mention it, and
   P(label | mentions the subgroup) against P(label). A gap means the data ties the label to the
   identity (in toxicity data, "gay" appearing mostly in toxic rows is the classic case, Dixon et al.
   2018), which a model learns as a shortcut.
2. Model, on the held-out split: accuracy per subgroup, and for binary tasks the three AUCs of the
   Jigsaw Unintended Bias challenge (Borkan et al., 2019, "Nuanced Metrics for Measuring Unintended
   Bias with Real Data for Text Classification"):
   - subgroup AUC: positives against negatives within the subgroup;
   - BPSN (background positive, subgroup negative): high when subgroup negatives do not score above
     background positives (low: the model raises scores for the mere mention);
   - BNSP (background negative, subgroup positive): the mirror image.
   scikit-learn computes each AUC.

Subgroups are matched by whole words, case-insensitively, from TERMS (after the Jigsaw identity
columns); `eval.bias.terms` adds subgroups or replaces one's terms. Word lists are blunt: "black
comedy" mentions `black`. The counts say how many rows each figure rests on; a subgroup with fewer than
`min_mentions` rows is listed but not warned about.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tunelab.config.safety import BiasConfig

TERMS: dict[str, list[str]] = {
    "female": [
        "woman",
        "women",
        "female",
        "females",
        "girl",
        "girls",
        "she",
        "her",
        "lady",
        "ladies",
        "mother",
        "wife",
    ],
    "male": [
        "man",
        "men",
        "male",
        "males",
        "boy",
        "boys",
        "he",
        "him",
        "his",
        "gentleman",
        "father",
        "husband",
    ],
    "lgbtq": [
        "gay",
        "gays",
        "lesbian",
        "lesbians",
        "bisexual",
        "transgender",
        "trans",
        "queer",
        "homosexual",
        "lgbt",
    ],
    "christian": ["christian", "christians", "christianity", "catholic", "catholics", "protestant"],
    "jewish": ["jew", "jews", "jewish", "judaism"],
    "muslim": ["muslim", "muslims", "islam", "islamic"],
    "black": ["black", "blacks", "african american", "african-american"],
    "white": ["white", "whites", "caucasian"],
    "asian": ["asian", "asians", "chinese", "japanese", "korean"],
    "latino": ["latino", "latina", "latinos", "hispanic", "hispanics", "mexican"],
    "disability": ["disabled", "disability", "blind", "deaf", "wheelchair", "autistic"],
    "mental_illness": ["mentally ill", "mental illness", "schizophrenic", "bipolar", "psychiatric"],
}


def subgroup_terms(cfg: BiasConfig) -> dict[str, list[str]]:
    return {**TERMS, **cfg.terms}


def mentions(texts: list[str], terms: dict[str, list[str]]) -> dict[str, list[bool]]:
    """For each subgroup, whether each text mentions one of its terms (whole words, any case)."""
    found = {}
    for group, words in terms.items():
        pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
        found[group] = [bool(pattern.search(text)) for text in texts]
    return found


def data_bias(texts: list[str], labels: list[str], cfg: BiasConfig) -> dict[str, Any]:
    """Per subgroup: rows mentioning it, P(label | mention) per label, and the largest gap to P(label)."""
    base = {label: n / len(labels) for label, n in sorted(Counter(labels).items())}
    rows, warnings = [], []
    for group, mask in mentions(texts, subgroup_terms(cfg)).items():
        mentioned = [label for label, m in zip(labels, mask, strict=True) if m]
        if not mentioned:
            rows.append({"subgroup": group, "rows": 0, "p_label": {}, "largest_gap": None})
            continue
        p = {label: sum(1 for m in mentioned if m == label) / len(mentioned) for label in base}
        # The label furthest from its overall share; on a tie, the over-represented one.
        label, gap = max(((k, p[k] - base[k]) for k in base), key=lambda kv: (abs(kv[1]), kv[1]))
        rows.append(
            {"subgroup": group, "rows": len(mentioned), "p_label": p, "largest_gap": gap, "gap_label": label}
        )
        if len(mentioned) >= cfg.min_mentions and abs(gap) > cfg.max_gap:
            warnings.append(
                f"train: rows mentioning {group} ({len(mentioned)}) are labelled {label} "
                f"{p[label]:.0%} of the time against {base[label]:.0%} overall"
            )
    return {"p_label": base, "subgroups": rows, "warnings": warnings}


def model_bias(
    texts: list[str], y_true: list[int], probs: list[list[float]], names: list[str], cfg: BiasConfig
) -> dict[str, Any]:
    """Per subgroup on the held-out split: accuracy, and for two classes the subgroup, BPSN and BNSP
    AUCs of the positive class's probability. Warns where one is `max_gap` below the overall figure."""
    positive = _positive_index(names, cfg)
    y_pred = [max(range(len(p)), key=p.__getitem__) for p in probs]
    overall = _scores(y_true, y_pred, probs, [True] * len(y_true), positive)
    rows, warnings = [], []
    for group, mask in mentions(texts, subgroup_terms(cfg)).items():
        scores = _scores(y_true, y_pred, probs, mask, positive)
        rows.append({"subgroup": group, **scores})
        if scores["rows"] < cfg.min_mentions:
            continue
        for key in ("accuracy", "subgroup_auc", "bpsn_auc", "bnsp_auc"):
            reference = overall["accuracy" if key == "accuracy" else "subgroup_auc"]
            if (
                scores.get(key) is not None
                and reference is not None
                and scores[key] < reference - cfg.max_gap
            ):
                warnings.append(
                    f"held-out rows mentioning {group} ({scores['rows']}): {key} {scores[key]:.3f} against "
                    f"{reference:.3f} overall"
                )
    positive_name = names[positive] if positive is not None else None
    return {"positive_label": positive_name, "overall": overall, "subgroups": rows, "warnings": warnings}


def _positive_index(names: list[str], cfg: BiasConfig) -> int | None:
    """The class whose probability the AUCs rank: eval.bias.positive_label, else the second of two."""
    if cfg.positive_label is not None:
        return names.index(cfg.positive_label) if cfg.positive_label in names else None
    return 1 if len(names) == 2 else None


def _scores(
    y_true: list[int], y_pred: list[int], probs: list[list[float]], mask: list[bool], positive: int | None
) -> dict[str, Any]:
    inside = [i for i, m in enumerate(mask) if m]
    out: dict[str, Any] = {"rows": len(inside), "accuracy": None}
    if inside:
        out["accuracy"] = sum(1 for i in inside if y_true[i] == y_pred[i]) / len(inside)
    if positive is None:
        return out
    score = [p[positive] for p in probs]
    is_pos = [t == positive for t in y_true]
    background = [not m for m in mask]
    out["subgroup_auc"] = _auc(inside, is_pos, score)
    out["bpsn_auc"] = _auc(
        [i for i in range(len(mask)) if (mask[i] and not is_pos[i]) or (background[i] and is_pos[i])],
        is_pos,
        score,
    )
    out["bnsp_auc"] = _auc(
        [i for i in range(len(mask)) if (mask[i] and is_pos[i]) or (background[i] and not is_pos[i])],
        is_pos,
        score,
    )
    return out


def _auc(rows: list[int], is_pos: list[bool], score: list[float]) -> float | None:
    """ROC AUC over `rows` (None without both classes among them)."""
    from sklearn.metrics import roc_auc_score

    labels = [is_pos[i] for i in rows]
    if len(set(labels)) < 2:
        return None
    return float(roc_auc_score(labels, [score[i] for i in rows]))
