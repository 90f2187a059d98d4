"""`tunelab plan`: will this recipe's training fit in memory, and how long will an epoch take?

Three parts, each usable on its own:

- `estimate_memory` is pure arithmetic: weights, gradients, AdamW state, activations, the loss's logits
  and the process's own footprint, from the model's shape (read through AutoConfig), its parameter
  counts under the recipe's method (counted on a `meta`-device copy: no weights are read) and the batch.
- `probe` runs a few real optimizer steps of the recipe's own training (the runner's data stage, model
  loading, method, objective, batches and optimizer step) and measures step time and peak memory.
- `suggest` lists changes that would make a recipe fit, least change to the training result first,
  each with its new estimate.

`plan` puts them together for one recipe and `render` prints the result. The modules:

    memory.py       the estimator: ModelShape, ParamFacts, Workload -> MemoryEstimate
    shapes.py       the model's shape and parameter counts from a meta-device build
    measure.py      resident set and its peak, the machine's memory, --memory sizes
    probing.py      the probe: a few real, timed training steps
    suggestions.py  changes that would make it fit, and the leaner methods to consider
    planner.py      plan(): all of the above for one recipe -> PlanResult
    report.py       the terminal output

Nothing here imports torch or transformers at import time: they are imported inside the functions that
need them, so `tunelab --help` stays fast.
"""

from tunelab.plan.measure import parse_memory
from tunelab.plan.memory import (
    HIDDEN_ELEMENTS_PER_TOKEN,
    LOSS_CHUNK_TOKENS,
    OUTSIDE_ELEMENTS_PER_TOKEN,
    MemoryEstimate,
    ModelShape,
    ParamFacts,
    RunEstimate,
    Scoring,
    Workload,
    activation_bytes,
    estimate_memory,
    estimate_run,
    scoring_bytes,
)
from tunelab.plan.planner import PlanResult, plan, scoring_passes, workload
from tunelab.plan.probing import Probe, probe, row_tokens
from tunelab.plan.report import render
from tunelab.plan.shapes import NF4_BYTES_PER_WEIGHT, method_facts, param_facts
from tunelab.plan.suggestions import (
    FEWER_WEIGHTS,
    SAME_RESULT,
    Alternative,
    Suggestion,
    alternatives_for,
    suggest,
)

__all__ = [
    "FEWER_WEIGHTS",
    "HIDDEN_ELEMENTS_PER_TOKEN",
    "LOSS_CHUNK_TOKENS",
    "NF4_BYTES_PER_WEIGHT",
    "OUTSIDE_ELEMENTS_PER_TOKEN",
    "SAME_RESULT",
    "Alternative",
    "MemoryEstimate",
    "ModelShape",
    "ParamFacts",
    "PlanResult",
    "Probe",
    "RunEstimate",
    "Scoring",
    "Suggestion",
    "Workload",
    "activation_bytes",
    "alternatives_for",
    "estimate_memory",
    "estimate_run",
    "method_facts",
    "param_facts",
    "parse_memory",
    "plan",
    "probe",
    "render",
    "row_tokens",
    "scoring_bytes",
    "scoring_passes",
    "suggest",
    "workload",
]
