"""`tunelab export`: turn a run's final/ into a folder that other tools load.

Without --merge the weights go as trained: a peft adapter (load it onto its base with peft), a
bottleneck adapter (tunelab only), or full weights (full / freeze runs). With --merge a peft adapter
is folded into its base, loaded in float32 and never quantised (merging into 4-bit weights would
round the update away), and the result saved as plain transformers weights.

Every export also holds the tokenizer with the training chat template, a generation config that
stops at the template's end-of-turn token, the label map, tunelab.json and a model card. The
folder is built under a temporary name beside `out` and renamed at the end, so a failed export never
leaves a folder that looks complete.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import string
from pathlib import Path
from typing import Any

import yaml
from transformers import GenerationConfig

from tunelab.errors import TunelabError
from tunelab.generation import stop_token_ids
from tunelab.models.final import base_hub_id
from tunelab.models.gguf import gguf_file
from tunelab.models.portable import make_portable
from tunelab.models.restore import load_trained, read_recipe
from tunelab.models.saved import (
    INFO,
    LABELS,
    adapter_kind,
    load_saved_tokenizer,
    read_info,
    read_label_map,
    resolve_final,
    run_dir_of,
)
from tunelab.runs.rundir import read_summary
from tunelab.runs.summary import RunSummary
from tunelab.tasks.registry import task_spec

README = "README.md"
RECIPE = "recipe.yaml"


def export_run(run: Path, out: Path, merge: bool = False, *, force: bool = False) -> Path:
    """Export `run` (a run folder or its final/) to `out`; returns `out`.

    Raises TunelabError when `out` names a file format rather than a folder, when it is not empty
    (unless `force`), or when `merge` is asked of a method that cannot be merged.
    """
    _check_out_name(out)
    final = resolve_final(run)
    info = read_info(final)
    kind = adapter_kind(final)
    _check_out(out, final, force)
    if merge and kind is not None:
        _check_mergeable(final, kind, info["method"])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        weights = _write_weights(final, kind, merge, tmp)
        export = {
            "weights": weights,
            "adapter": kind if weights == "adapter" else None,
            "from": str(Path(run).resolve()),
        }
        _write_extras(final, {**info, "export": export}, tmp)
        make_portable(tmp)  # loads in transformers 4.x too (vLLM, llama.cpp's converter)
        _replace_folder(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never a half-written export
        raise
    return out


def exported_weights(out: Path) -> str:
    """What an export holds: 'merged', 'adapter' or 'full' (read back from its tunelab.json)."""
    return str(json.loads((out / INFO).read_text(encoding="utf-8"))["export"]["weights"])


# ---------------------------------------------------------------------------------------------
# Checks, before anything is written

# Suffixes of single-file formats (weights, archives): an export is a folder, and a folder named
# model.gguf would pass for a file of that format. Compared in lower case.
FILE_FORMATS = {
    ".gguf": "GGUF",
    ".ggml": "GGML",
    ".bin": "PyTorch .bin",
    ".safetensors": "safetensors",
    ".pt": "PyTorch",
    ".pth": "PyTorch",
    ".ckpt": "checkpoint",
    ".onnx": "ONNX",
    ".tflite": "TFLite",
    ".h5": "Keras/HDF5",
    ".keras": "Keras",
    ".pb": "TensorFlow",
    ".pkl": "pickle",
    ".pickle": "pickle",
    ".npz": "NumPy",
    ".mlmodel": "Core ML",
    ".engine": "TensorRT",
    ".llamafile": "llamafile",
    ".zip": "zip",
    ".tar": "tar",
    ".gz": "gzip",
    ".tgz": "tar",
    ".xz": "xz",
    ".zst": "zstd",
}


def _check_out_name(out: Path) -> None:
    """Refuse an --out that names a file format: export writes a folder, never one file."""
    suffix = out.suffix.lower()
    if suffix not in FILE_FORMATS:
        return
    folder = out.parent / out.name[: -len(out.suffix)]
    while folder.suffix.lower() in FILE_FORMATS:  # model.tar.gz: model
        folder = folder.with_suffix("")
    fix = f"name a folder, e.g. --out {folder}/ (it will hold the weights, tokenizer and model card)"
    if suffix == ".gguf":
        fix += (
            "; tunelab cannot write GGUF yet: export with --merge, then convert the folder with "
            "llama.cpp's convert_hf_to_gguf.py"
        )
    raise TunelabError(
        f"--out {out} names a {FILE_FORMATS[suffix]} file, but export writes a folder, not a {suffix} file",
        fix=fix,
    )


def _check_out(out: Path, final: Path, force: bool) -> None:
    resolved, source = out.resolve(), final.resolve()
    if resolved == source or resolved in source.parents:
        # --force would delete the run being exported.
        raise TunelabError(f"--out {out} holds the run being exported", fix="choose a folder outside the run")
    if not out.exists():
        return
    if not out.is_dir():
        raise TunelabError(f"--out {out} is a file, not a folder", fix="choose a folder name")
    if any(out.iterdir()) and not force:
        raise TunelabError(
            f"--out {out} already exists and is not empty", fix="choose another folder, or --force"
        )


def _check_mergeable(final: Path, kind: str, method: str) -> None:
    if kind == "bottleneck":
        reason = "a bottleneck adapter adds new layers to the model; there is no base weight to fold it into"
        needs = "tunelab (tunelab chat / predict / eval load it)"
    else:
        from peft import PeftConfig

        if not PeftConfig.from_pretrained(str(final)).is_prompt_learning:
            return
        reason = f"{method} learns virtual tokens fed to the model at every call, not a change of its weights"
        needs = "peft at inference (PeftModel.from_pretrained(base, folder))"
    raise TunelabError(
        f"--merge: {method} cannot be merged: {reason}",
        fix=f"export without --merge: the adapter-only export works, and loading it needs {needs}",
    )


# ---------------------------------------------------------------------------------------------
# Writing


def _write_weights(final: Path, kind: str | None, merge: bool, tmp: Path) -> str:
    """The weights into `tmp`; returns what they are: 'merged', 'adapter' or 'full'."""
    if kind is None or not merge:
        # Full weights are final already, and an adapter exports as trained: copied, byte for byte.
        shutil.copytree(final, tmp)
        return "full" if kind is None else "adapter"
    # float32, never quantised: the merged weights are W + BA computed in full precision.
    trained = load_trained(final, dtype="float32")
    merged = trained.model.merge_and_unload(safe_merge=True)  # safe_merge: refuse NaNs instead of saving them
    merged.save_pretrained(str(tmp))  # safetensors
    return "merged"


def _write_extras(final: Path, info: dict[str, Any], tmp: Path) -> None:
    """Everything but the weights; `info` is tunelab.json with the export's own entry."""
    tokenizer = load_saved_tokenizer(final)
    tokenizer.save_pretrained(str(tmp))  # with the chat template used in training
    if task_spec(info["task"]).head.generative:
        _write_generation_config(tmp, info, tokenizer)
    label_map = read_label_map(final)
    if label_map is not None:
        _write_label_map(tmp, label_map)
    (tmp / INFO).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    run_dir = run_dir_of(final)
    card = model_card(info, label_map, read_recipe(run_dir), _read_summary(run_dir))
    (tmp / README).write_text(card, encoding="utf-8")
    if run_dir is not None and (run_dir / RECIPE).is_file():
        # How the rows were read and prompts written: `tunelab eval/predict EXPORT` read files alike.
        shutil.copyfile(run_dir / RECIPE, tmp / RECIPE)


def _write_generation_config(tmp: Path, info: dict[str, Any], tokenizer: Any) -> None:
    """So that a plain `model.generate` stops at the end of the answer, not at max_new_tokens."""
    config = _existing_generation_config(tmp, info["base_model"])
    config.eos_token_id = stop_token_ids(tokenizer, config)
    if config.pad_token_id is None:
        config.pad_token_id = tokenizer.pad_token_id
    config.save_pretrained(str(tmp))


def _existing_generation_config(tmp: Path, base_model: str) -> GenerationConfig:
    """The model's own generation settings when there are some (saved weights first, then the base)."""
    for source in (str(tmp), base_model):
        try:
            return GenerationConfig.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError):
            continue
    return GenerationConfig()


def _write_label_map(tmp: Path, label_map: dict[str, int]) -> None:
    (tmp / LABELS).write_text(json.dumps(label_map, indent=2) + "\n", encoding="utf-8")
    config_file = tmp / "config.json"
    if config_file.is_file():  # full or merged weights: transformers reads the names from config.json
        config = json.loads(config_file.read_text(encoding="utf-8"))
        config["id2label"] = {str(i): name for name, i in label_map.items()}
        config["label2id"] = dict(label_map)
        config_file.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def _replace_folder(tmp: Path, out: Path) -> None:
    if not out.exists():
        tmp.rename(out)
        return
    old = out.with_name(f".{out.name}.old-{secrets.token_hex(4)}")
    out.rename(old)  # an existing (empty, or --force) folder steps aside only once the export is whole
    try:
        tmp.rename(out)
    except BaseException:
        old.rename(out)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _read_summary(run_dir: Path | None) -> RunSummary:
    """The run's summary; an empty one for a final/ folder outside its run."""
    if run_dir is None or not (run_dir / "summary.json").is_file():
        return RunSummary()
    return read_summary(run_dir)


# ---------------------------------------------------------------------------------------------
# The model card


def model_card(
    info: dict[str, Any], label_map: dict[str, int] | None, recipe: dict[str, Any], summary: RunSummary
) -> str:
    """README.md: Hub metadata, how to load the export, the results against baselines, the recipe."""
    weights = info["export"]["weights"]
    front = {
        **_hub_base_model(info),
        "library_name": "peft" if weights == "adapter" else "transformers",
        "pipeline_tag": _pipeline_tag(info["task"]),
        "tags": ["tunelab", info["task"], info["method"], *(["merged"] if weights == "merged" else [])],
    }
    name = summary.name or recipe.get("name") or "tunelab model"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {name}", ""]
    lines += [_description(info, weights), ""]
    if info.get("chat_template"):
        lines += [
            f"Prompts use the `{info['chat_template']}` chat template, saved with the tokenizer "
            "(`tokenizer.apply_chat_template`); `generation_config.json` stops generation at its "
            "end-of-turn token.",
            "",
        ]
    lines += _prompt_lines(info)
    if label_map:
        lines += [f"Labels: {', '.join(f'`{n}`' for n in sorted(label_map, key=label_map.__getitem__))}.", ""]
    lines += ["## Use", "", *_usage(info, weights, label_map), ""]
    lines += ["## Results", "", *_results_table(summary), ""]
    lines += ["## Training recipe", "", *_recipe_table(recipe), ""]
    return "\n".join(lines)


def _hub_base_model(info: dict[str, Any]) -> dict[str, str]:
    """The card's base_model: the Hub id of the base when one is known, else nothing (the Hub reads
    base_model as a model id; a local path or .gguf file there is a broken link)."""
    # A final/ written before tunelab.json recorded base_hub_id: worked out from the name now.
    known = info["base_hub_id"] if "base_hub_id" in info else base_hub_id(info["base_model"])
    return {"base_model": known} if known else {}


def _pipeline_tag(task: str) -> str:
    return task_spec(task).head.pipeline_tag


def _prompt_lines(info: dict[str, Any]) -> list[str]:
    """How training wrote its prompts, since the model answers best when asked the same way (the
    usage code below writes them so; `tunelab chat/generate` on this folder do it themselves)."""
    lines = []
    if info.get("prompt_template"):
        lines += [
            f"Training prompts were written as `{info['prompt_template']!r}` (a Python format string).",
            "",
        ]
    if info.get("system_prompt"):
        lines += [f"Every conversation had the system prompt `{info['system_prompt']!r}`.", ""]
    return lines


def _prompt_setup(info: dict[str, Any]) -> tuple[list[str], str]:
    """The usage code's PROMPT / SYSTEM lines, and the expression that writes the user's text."""
    template = info.get("prompt_template")
    lines, user = [], '"Hello!"'
    if template:
        fields = [name for _, name, _, _ in string.Formatter().parse(template) if name]
        lines.append(f"PROMPT = {template!r}")
        user = "PROMPT.format(" + ", ".join(f'{name}="..."' for name in dict.fromkeys(fields)) + ")"
    if info.get("system_prompt"):
        lines.append(f"SYSTEM = {info['system_prompt']!r}")
    return lines, user


def _example_messages(info: dict[str, Any]) -> list[str]:
    """The usage code's conversation, written as training wrote its prompts."""
    lines, user = _prompt_setup(info)
    turns = [f'{{"role": "user", "content": {user}}}']
    if info.get("system_prompt"):
        turns.insert(0, '{"role": "system", "content": SYSTEM}')
    return [*lines, f"messages = [{', '.join(turns)}]"]


def _seq2seq_call(info: dict[str, Any]) -> list[str]:
    """An encoder-decoder reads its source as training encoded it (data/seq2seq.py): the system text and
    a blank line first, if there is one, then the prompt; the tokenizer's special tokens; no template."""
    lines, user = _prompt_setup(info)
    source = f'SYSTEM + "\\n\\n" + {user}' if info.get("system_prompt") else user
    return [
        *lines,
        f'inputs = tokenizer({source}, return_tensors="pt")',
        "output = model.generate(**inputs, max_new_tokens=128)",
        "print(tokenizer.decode(output[0], skip_special_tokens=True))",
    ]


def _description(info: dict[str, Any], weights: str) -> str:
    what = {
        "merged": f"the {info['method']} adapter merged into the base weights (float32)",
        "adapter": f"the {info['method']} adapter alone; it loads onto the base model",
        "full": "the full fine-tuned weights",
    }[weights]
    text = (
        f"`{info['task']}` fine-tune of `{info['base_model']}`, made with tunelab. This folder holds {what}."
    )
    merged_from = info.get("base_adapter")
    if merged_from and weights == "adapter":
        # Plain peft over the raw base would run without the first stage (model.adapter): say so.
        text += (
            f" It was trained over the {merged_from['method']} adapter of a {merged_from['task']} run, merged"
            " into the base first (a copy is in base_adapter/): load it with tunelab, or export with --merge"
            " for weights that stand alone."
        )
    if info["method"] == "qlora" and weights == "merged":
        text += (
            " The adapter was trained on a 4-bit quantised base and is merged here into the full-precision"
            " base, so outputs can differ slightly from the quantised model scored during training."
        )
    return text


def _usage(info: dict[str, Any], weights: str, label_map: dict[str, int] | None) -> list[str]:
    head = task_spec(info["task"]).head
    generative = head.generative
    tunelab = (
        "tunelab chat FOLDER"
        if generative
        else "tunelab predict FOLDER --data rows.jsonl --out predictions.jsonl"
    )
    tunelab_line = f"With tunelab: `{tunelab}` (FOLDER is this folder)."
    if weights == "adapter" and info["export"].get("adapter") == "bottleneck":
        return ["This bottleneck adapter is inserted into its base by tunelab. " + tunelab_line]
    auto = head.auto_class
    chat = generative and bool(info.get("chat_template"))
    extra = ", GenerationConfig" if chat and weights == "adapter" else ""
    code = [f"from transformers import {auto}, AutoTokenizer{extra}", ""]
    if weights == "adapter":
        outputs = ", num_labels=1" if head.outputs == "score" else ""
        if label_map:
            id2label = {i: name for name, i in label_map.items()}
            outputs = f", num_labels={len(label_map)}, id2label={id2label!r}"
        code[0:0] = ["from peft import PeftModel"]
        code += [_tokenizer_line(chat), f"base = {auto}.from_pretrained({_base_arguments(info)}{outputs})"]
        if info.get("added_tokens"):  # the chat markers training added: the base needs their rows
            code += ["base.resize_token_embeddings(len(tokenizer))  # rows for the tokens training added"]
        code += ['model = PeftModel.from_pretrained(base, "FOLDER")']
    else:
        code += [f'model = {auto}.from_pretrained("FOLDER")', _tokenizer_line(chat)]
    if head.generative and head.auto_class == "AutoModelForSeq2SeqLM":
        code += ["", *_seq2seq_call(info)]
    elif chat:
        # An adapter's own folder is not where transformers looks for generation settings: pass them.
        settings = (
            ', generation_config=GenerationConfig.from_pretrained("FOLDER")' if weights == "adapter" else ""
        )
        code += [
            "",
            *_example_messages(info),
            "inputs = tokenizer.apply_chat_template(",
            '    messages, add_generation_prompt=True, return_dict=True, return_tensors="pt"',
            ")",
            f"output = model.generate(**inputs, max_new_tokens=128{settings})  # stops at the end of turn",
            'print(tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True))',
        ]
    return ["```python", *code, "```", "", tunelab_line]


def _base_arguments(info: dict[str, Any]) -> str:
    """from_pretrained's arguments for the base the adapter was trained on; transformers reads a .gguf
    base from its folder and file name (it dequantises it, as tunelab did)."""
    name = info["base_model"]
    gguf = gguf_file(name) or (Path(name) if name.lower().endswith(".gguf") else None)
    return f'"{gguf.parent}", gguf_file="{gguf.name}"' if gguf else f'"{name}"'


def _tokenizer_line(chat: bool) -> str:
    return 'tokenizer = AutoTokenizer.from_pretrained("FOLDER")' + (
        "  # with the training chat template" if chat else ""
    )


def _results_table(summary: RunSummary) -> list[str]:
    metrics = {k: v for k, v in summary.metrics.items() if isinstance(v, int | float)}
    if not metrics:
        return ["No metrics were recorded for this run."]
    before = summary.before_training
    baselines = {name: scores for name, scores in summary.baselines.items() if scores}
    header = [
        "metric",
        "fine-tuned",
        "before training",
        *(f"{n.replace('_', '-')} baseline" for n in baselines),
    ]
    rows = [
        [name, _number(value), _number(before.get(name)), *(_number(s.get(name)) for s in baselines.values())]
        for name, value in metrics.items()
    ]
    return _table(header, rows)


def _recipe_table(recipe: dict[str, Any]) -> list[str]:
    if not recipe:
        return ["The recipe was not found (the export was made from a final/ folder outside its run)."]
    return _table(["setting", "value"], [[key, value] for key, value in _flatten(recipe)])


def _flatten(value: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(value, dict) and value:
        return [item for key, inner in value.items() for item in _flatten(inner, f"{prefix}{key}.")]
    text = json.dumps(value) if isinstance(value, list | dict | bool) or value is None else str(value)
    return [(prefix.rstrip("."), text)]


def _number(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(cell).replace("|", "\\|").replace("\n", " ") for cell in cells) + " |"

    return [line(header), line(["---"] * len(header)), *(line(row) for row in rows)]
