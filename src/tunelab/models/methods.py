"""The built-in methods' builders: which weights move. `tunelab.methods` registers each with its recipe
schema and traits; `apply_method` looks the recipe's `method.name` up there.

Every builder has the signature `(model, cfg, task, new_modules[, new_tokens]) -> model`. `new_modules` are the modules
the checkpoint did not hold (a new classification head): whatever the method, they train in full, and
adapter methods save them with the adapter (peft's `modules_to_save`).

Adapter methods come from peft wherever peft has them (lora, dora, qlora, ia3, prefix, prompt); the
bottleneck adapter, which peft lacks, is in `adapters.py`. Over a quantised base (qlora, or
`model.load_in_8bit`), peft's `prepare_model_for_kbit_training` runs first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from peft import (
    IA3Config,
    LoraConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    get_peft_model,
    prepare_model_for_kbit_training,
)
from peft.utils import (
    TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING,
    TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING,
)

from tunelab.errors import RecipeError
from tunelab.methods import (
    AdapterMethod,
    FreezeMethod,
    FullMethod,
    Ia3Method,
    LoraMethod,
    PrefixMethod,
    PromptMethod,
    method_spec,
    methods_where,
)
from tunelab.models.adapters import add_bottleneck_adapters, hidden_size
from tunelab.models.peft_compat import cache_argument, fix_prefix_classifier

# The head each task loads (see load.py) decides peft's task type: it picks the PeftModel subclass, which
# knows where the head is and how virtual tokens meet it.
TASK_TYPES: dict[str, TaskType] = {
    "sft": TaskType.CAUSAL_LM,
    "pretrain": TaskType.CAUSAL_LM,
    "preference": TaskType.CAUSAL_LM,
    "classify": TaskType.SEQ_CLS,
    "reward": TaskType.SEQ_CLS,  # a sequence-classification head with one output
    "token_classify": TaskType.TOKEN_CLS,
    "seq2seq": TaskType.SEQ_2_SEQ_LM,
}


def peft_task_type(task: str) -> TaskType:
    if task not in TASK_TYPES:
        raise RecipeError(f"task: no model head is known for task {task!r}; one of {', '.join(TASK_TYPES)}")
    return TASK_TYPES[task]


# ---------------------------------------------------------------------------------------------
# Full-weight methods


def apply_full(
    model: Any, cfg: FullMethod, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    _refuse_quantised(model, cfg.name)
    for param in model.parameters():
        param.requires_grad_(True)
    return model


def apply_freeze(model: Any, cfg: FreezeMethod, task: str, new_modules: list[str]) -> Any:
    """Train the top k blocks and everything registered after them (final norm, pooler, head).

    "After the blocks" is read from parameter registration order, which for transformer models is
    embeddings -> blocks -> head; this avoids a per-architecture table of head names.
    """
    _refuse_quantised(model, cfg.name)
    blocks = find_blocks(model, cfg.name)
    if cfg.k > len(blocks):
        raise RecipeError(f"method.k: the model has {len(blocks)} blocks, got k={cfg.k}")
    trainable = {id(p) for block in list(blocks)[len(blocks) - cfg.k :] for p in block.parameters()}
    last_block_param = {id(p) for p in blocks[-1].parameters()}
    past_blocks = False
    for param in model.parameters():
        param.requires_grad_(False)
    for param in model.parameters():
        if past_blocks or id(param) in trainable:
            param.requires_grad_(True)
        if id(param) in last_block_param:
            past_blocks = True
    return model


def find_blocks(model: Any, method: str = "freeze") -> torch.nn.ModuleList:
    """The transformer's stack of blocks: the longest ModuleList whose members share one class."""
    candidates = [
        module
        for module in model.modules()
        if isinstance(module, torch.nn.ModuleList) and len(module) > 0 and len({type(m) for m in module}) == 1
    ]
    if not candidates:
        raise RecipeError(
            f"method: {method} needs a model with a stack of transformer blocks; none was found"
        )
    return max(candidates, key=len)


# ---------------------------------------------------------------------------------------------
# peft methods


def apply_lora(
    model: Any, cfg: LoraMethod, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    """LoRA; also over an 8-bit base (`model.load_in_8bit`), which is prepared for k-bit training first."""
    return _lora(model, cfg, task, new_modules, use_dora=False, new_tokens=new_tokens)


def apply_dora(
    model: Any, cfg: LoraMethod, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    """DoRA: LoRA on the weight's direction plus a trained magnitude per output feature."""
    return _lora(model, cfg, task, new_modules, use_dora=True, new_tokens=new_tokens)


def apply_qlora(
    model: Any, cfg: LoraMethod, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    """LoRA over a base loaded in 4-bit NF4 (load_model(..., quantisation="4bit"))."""
    if not getattr(model, "is_loaded_in_4bit", False):
        raise RecipeError(
            "method qlora: the base model was not loaded in 4-bit",
            fix="load it with load_model(..., quantisation='4bit'), or use method lora for a full-precision base",
        )
    return _lora(model, cfg, task, new_modules, use_dora=False, new_tokens=new_tokens)


def _lora(
    model: Any,
    cfg: LoraMethod,
    task: str,
    new_modules: list[str],
    *,
    use_dora: bool,
    new_tokens: Sequence[int] = (),
) -> Any:
    config = LoraConfig(
        r=cfg.r,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        # auto (a recipe's all-linear is read as auto) is peft's "all-linear": it skips the output head,
        # which LoRA should not adapt.
        target_modules="all-linear" if cfg.target_modules == "auto" else cfg.target_modules,
        use_dora=use_dora,
        task_type=peft_task_type(task),
        # Newly initialised modules (the classification head) have no pre-trained weights to adapt:
        # they are trained in full and saved with the adapter.
        modules_to_save=list(new_modules) or None,  # a copy: peft appends to it
        trainable_token_indices=_token_rows(model, new_tokens) if new_tokens else None,
    )
    return _attach(model, config, "method.target_modules")


def _token_rows(model: Any, token_ids: Sequence[int]) -> dict[str, list[int]]:
    """peft's trainable_token_indices for new tokens: their input-embedding rows and, when the output head
    is not tied to the embeddings, their output rows too (else the model could never predict them)."""
    names = {id(module): name for name, module in model.named_modules()}
    rows = {names[id(model.get_input_embeddings())]: list(token_ids)}
    output = model.get_output_embeddings()
    if output is not None and output.weight is not model.get_input_embeddings().weight:
        rows[names[id(output)]] = list(token_ids)
    return rows


def apply_ia3(model: Any, cfg: Ia3Method, task: str, new_modules: list[str]) -> Any:
    """(IA)3: learned vectors rescaling keys, values and the MLP; "auto" reads peft's per-architecture table."""
    targets, feedforward = _ia3_modules(model, cfg)
    config = IA3Config(
        target_modules=targets,
        feedforward_modules=feedforward,
        task_type=peft_task_type(task),
        modules_to_save=list(new_modules) or None,  # a copy: peft appends to it
    )
    return _attach(model, config, "method.target_modules")


def _ia3_modules(model: Any, cfg: Ia3Method) -> tuple[str | list[str], list[str]]:
    model_type = getattr(model.config, "model_type", "?")
    known_targets = TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING.get(model_type)
    known_feedforward = TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(model_type)
    if cfg.target_modules == "auto" and known_targets is None:
        raise RecipeError(
            f"method.target_modules: peft has no (IA)3 defaults for model type {model_type!r}",
            fix="list the key, value and MLP output layers in method.target_modules and the MLP ones in "
            "method.feedforward_modules, or write all-linear",
        )
    # all-linear goes to peft as written: peft picks every linear layer but the output (or classifier) head.
    targets: str | list[str] = "all-linear"
    if cfg.target_modules != "all-linear":
        targets = list(known_targets or []) if cfg.target_modules == "auto" else list(cfg.target_modules)
    if cfg.feedforward_modules != "auto":
        feedforward = list(cfg.feedforward_modules)
    elif known_feedforward is not None:
        # peft requires feed-forward modules to be among the targets; with hand-picked targets keep those.
        feedforward = [name for name in known_feedforward if targets == "all-linear" or name in targets]
    else:
        raise RecipeError(
            f"method.feedforward_modules: peft has no (IA)3 defaults for model type {model_type!r}",
            fix="list which of method.target_modules are MLP layers (their input is rescaled), or []",
        )
    if targets != "all-linear" and not set(feedforward) <= set(targets):
        raise RecipeError(
            f"method.feedforward_modules: {sorted(set(feedforward) - set(targets))} are not in "
            f"method.target_modules ({targets})"
        )
    return targets, feedforward


def apply_prefix(model: Any, cfg: PrefixMethod, task: str, new_modules: list[str]) -> Any:
    """Prefix tuning: trained key/value prefixes, handed to every layer as a past key-value cache."""
    _require_key_value_cache(model)
    config = PrefixTuningConfig(
        task_type=peft_task_type(task),
        num_virtual_tokens=cfg.num_virtual_tokens,
        prefix_projection=cfg.projection,
        # The reparameterising MLP's width; peft has no default for it, the model's width is the usual one.
        encoder_hidden_size=hidden_size(model),
        modules_to_save=list(new_modules) or None,  # a copy: peft appends to it
    )
    return _attach(model, config, "method")


def apply_prompt(model: Any, cfg: PromptMethod, task: str, new_modules: list[str]) -> Any:
    """Prompt tuning: trained soft-prompt embeddings put before the input's.

    With a causal LM the logits gain one position per virtual token, at the front: callers that align
    logits with input_ids must drop the first `num_virtual_tokens` positions (`logits[:, -seq_len:]`).
    """
    if peft_task_type(task) == TaskType.SEQ_CLS and _pools_last_token(model):
        raise RecipeError(
            f"method prompt: {type(model).__name__} classifies from the last non-padding token, which it "
            "finds from input_ids; with a soft prompt peft passes embeddings instead, so padded batches "
            "would be classified from a padding position",
            fix="use method prefix or lora with this model, or an encoder model (BERT-like) for prompt tuning",
        )
    text = cfg.init_text
    config = PromptTuningConfig(
        task_type=peft_task_type(task),
        num_virtual_tokens=cfg.num_virtual_tokens,
        prompt_tuning_init=PromptTuningInit.TEXT if text else PromptTuningInit.RANDOM,
        prompt_tuning_init_text=text,
        # peft tokenizes init_text itself, loading the tokenizer from here: the folder or Hub id the
        # model was loaded from (offline mode and the Hub cache apply as for the model).
        tokenizer_name_or_path=_model_source(model) if text else None,
        modules_to_save=list(new_modules) or None,  # a copy: peft appends to it
    )
    return _attach(model, config, "method.init_text" if text else "method")


def _attach(model: Any, config: PeftConfig, where: str) -> Any:
    _prepare_if_quantised(model)
    try:
        return fix_prefix_classifier(get_peft_model(model, config))
    except (ValueError, OSError) as exc:  # OSError: prompt init_text's tokenizer could not be loaded
        raise RecipeError(f"{where}: {exc}") from None


# ---------------------------------------------------------------------------------------------
# The bottleneck adapter (ours: peft has none)


def apply_adapter(model: Any, cfg: AdapterMethod, task: str, new_modules: list[str]) -> Any:
    """Houlsby bottleneck adapters after each attention and MLP output projection (not mergeable)."""
    _prepare_if_quantised(model)
    return add_bottleneck_adapters(model, cfg.reduction_factor, cfg.non_linearity, new_modules)


def apply_method(
    model: Any, cfg: Any, task: str, new_modules: list[str], new_tokens: Sequence[int] = ()
) -> Any:
    """The registered method `cfg.name` attached. `new_tokens` are token ids added to the vocabulary (a
    chat template's markers): their embedding rows start untrained, so the method must train them."""
    spec = method_spec(cfg.name)
    if new_tokens and not spec.trains_new_tokens:
        raise RecipeError(
            f"method {cfg.name} cannot train the embeddings of tokens added to the vocabulary",
            fix=f"use method {' or '.join(methods_where('trains_new_tokens'))}",
        )
    return spec.build(model, cfg, task, new_modules, new_tokens)


def is_adapter(model: Any) -> bool:
    """A peft model: the base stays as loaded and the adapter is what trained."""
    from peft import PeftModel

    return isinstance(model, PeftModel)


def count_parameters(model: Any) -> tuple[int, int]:
    """(trainable, total), counting tied weights once."""
    seen: set[int] = set()
    trainable = total = 0
    for param in model.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        # bitsandbytes packs two 4-bit weights into each stored byte.
        count = param.numel() * (2 if type(param).__name__ == "Params4bit" else 1)
        total += count
        trainable += count if param.requires_grad else 0
    return trainable, total


# ---------------------------------------------------------------------------------------------
# helpers


def is_quantised(model: Any) -> bool:
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def _prepare_if_quantised(model: Any) -> None:
    """Quantised bases need peft's preparation: norms and head upcast to float32, base frozen, and gradient
    checkpointing (non-reentrant, so inputs need not require grad) to fit the activations."""
    if is_quantised(model):
        prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False}
        )


def _refuse_quantised(model: Any, method: str) -> None:
    if is_quantised(model):
        raise RecipeError(
            f"method {method}: a quantised (4/8-bit) base cannot be trained itself",
            fix="use an adapter method (lora, dora, ia3) over it, or load the base unquantised",
        )


def _require_key_value_cache(model: Any) -> None:
    """peft hands prefixes to the model as a key-value cache; a model that takes none cannot use them."""
    backbone = getattr(model, "base_model", model)
    if cache_argument(model) is None and cache_argument(backbone) is None:
        raise RecipeError(
            f"method prefix: {type(model).__name__} takes no key-value cache (past_key_values / cache), "
            "which prefix tuning feeds its prefixes through",
            fix="use method prompt or lora with this model",
        )


def _pools_last_token(model: Any) -> bool:
    """Decoder-style classifiers read the last non-padding token; encoders (with a masked-LM head in
    transformers' tables) read the first token or a masked mean, which a soft prompt does not disturb."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_MASKED_LM_MAPPING_NAMES

    return getattr(model.config, "model_type", None) not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _model_source(model: Any) -> str:
    source = getattr(model.config, "_name_or_path", "")
    if not source:
        raise RecipeError(
            "method.init_text: the model does not record where it was loaded from, so its tokenizer "
            "cannot be found to embed init_text",
            fix="remove method.init_text (random initialisation)",
        )
    return str(source)
