"""Checks of the machine a recipe is about to run on: a CUDA GPU where fp16 or a quantised base needs
one, bitsandbytes where it quantises. `train` and `plan` run them before any work, `validate --host`
on request; reading a recipe never does, so its validity does not depend on the machine."""

from __future__ import annotations

import importlib.util

from tunelab.config.checks import Problem
from tunelab.config.recipe import Recipe
from tunelab.errors import RecipeError
from tunelab.methods.registry import method_spec


def host_problems(recipe: Recipe) -> list[Problem]:
    import torch

    cuda = torch.cuda.is_available()
    problems = []
    if recipe.train.precision == "fp16" and not cuda:
        problems.append(
            Problem("train.precision", "fp16 needs a CUDA GPU (loss scaling); on CPU use fp32 or bf16")
        )
    quantised = None
    base = method_spec(recipe.method.name).quantised_base
    if base is not None:
        quantised = ("method.name", f"{recipe.method.name} (a {base.replace('bit', '-bit')} base)")
    elif recipe.model.load_in_8bit:
        quantised = ("model.load_in_8bit", "model.load_in_8bit")
    if quantised is not None:
        path, what = quantised
        if not cuda:
            problems.append(
                Problem(
                    path,
                    f"{what} quantises the base with bitsandbytes, which needs a CUDA GPU, and none is visible; "
                    "on CPU use method lora (same adapters over a full-precision base)",
                )
            )
        elif importlib.util.find_spec("bitsandbytes") is None:
            problems.append(Problem(path, f"{what} needs the bitsandbytes package: pip install bitsandbytes"))
    return problems


def check_host(recipe: Recipe) -> None:
    """Raise RecipeError listing what this machine lacks for the recipe."""
    problems = host_problems(recipe)
    if problems:
        noun = "problem" if len(problems) == 1 else "problems"
        raise RecipeError(
            f"{recipe.name}: {len(problems)} {noun} on this machine",
            problems=[str(p) for p in problems],
            fix="run it where a CUDA GPU is visible, or change the recipe as each line says",
        )
