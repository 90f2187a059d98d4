"""Tiny, random, offline models saved to temp folders, so the real `from_pretrained(path)` code runs."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
# Converted GGUF bases go to a cache of the test session's own, never the user's ~/.cache/tunelab.
os.environ["TUNELAB_CACHE"] = tempfile.mkdtemp(prefix="tunelab-test-cache-")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "How do I check my balance? Your balance is shown on the home screen.",
    "Please transfer fifty dollars to my savings account.",
    "I lost my card yesterday, can you block it?",
    "Where is my order? It was due on Monday.",
    "Hello there! Good morning, how are you today?",
    "system user assistant: answer briefly and politely.",
    "0 1 2 3 4 5 6 7 8 9 10 100 1000",
]
SPECIAL_TOKENS = ["<unk>", "<pad>", "<s>", "</s>", "<|im_start|>", "<|im_end|>"]


def build_tokenizer() -> Any:
    """A byte-level BPE tokenizer trained in memory: any text encodes, offsets map back to characters."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
    )


def save_tiny_llama(folder: Path, *, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_plain_llama(folder: Path, like: Path) -> Path:
    """A tiny Llama shaped like the one in `like`, whose tokenizer has only <unk> <pad> <s> </s> as special
    tokens and one embedding row per token (300): a chat template's markers must be added as tokens,
    and the embeddings grow."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    config = AutoConfig.from_pretrained(like)
    config.vocab_size = 300
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)  # fmt: skip
    bpe.train_from_iterator(CORPUS * 4, trainer=trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    ).save_pretrained(folder)
    return folder


def save_tiny_bert(folder: Path, *, seed: int = 0, dropout: float = 0.1) -> Path:
    """A bare encoder (no classification head), like the quickstart's MiniLM: the head is new."""
    import torch
    from transformers import BertConfig, BertModel

    tokenizer = build_tokenizer()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=128,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def build_seq2seq_tokenizer(template: str) -> Any:
    """The test tokenizer with a post-processor that adds special tokens as T5's ("$A </s>") or BART's
    ("<s> $A </s>") do, to sources and targets alike."""
    from tokenizers import processors

    tokenizer = build_tokenizer()
    specials = [(t, tokenizer.convert_tokens_to_ids(t)) for t in ("<s>", "</s>") if t in template]
    tokenizer.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=template, special_tokens=specials
    )
    return tokenizer


def _save_seq2seq(folder: Path, model_class: Any, config: Any, tokenizer: Any, seed: int) -> Path:
    import torch

    torch.manual_seed(seed)
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def save_tiny_t5(folder: Path, *, seed: int = 0) -> Path:
    """A 2+2-layer T5 (relative position buckets, decoder starts from the pad token, as T5 does)."""
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = build_seq2seq_tokenizer("$A </s>")
    config = T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
        num_heads=4, dropout_rate=0.0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return _save_seq2seq(folder, T5ForConditionalGeneration, config, tokenizer, seed)


def save_tiny_bart(folder: Path, *, seed: int = 0) -> Path:
    """A 2+2-layer BART (learned absolute positions; the decoder starts from EOS, as BART's does)."""
    from transformers import BartConfig, BartForConditionalGeneration

    tokenizer = build_seq2seq_tokenizer("<s> $A </s>")
    config = BartConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=128, dropout=0.0, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id, forced_eos_token_id=None,
    )  # fmt: skip
    return _save_seq2seq(folder, BartForConditionalGeneration, config, tokenizer, seed)


def save_tiny_marian(folder: Path, *, seed: int = 0) -> Path:
    """A 1+1-layer Marian (sinusoidal positions; the decoder starts from the pad token)."""
    from transformers import MarianConfig, MarianMTModel

    tokenizer = build_seq2seq_tokenizer("$A </s>")
    config = MarianConfig(
        vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64,
        max_position_embeddings=128, dropout=0.0, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    return _save_seq2seq(folder, MarianMTModel, config, tokenizer, seed)


@pytest.fixture(scope="session")
def tiny_t5(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_t5(tmp_path_factory.mktemp("tiny-t5"))


@pytest.fixture(scope="session")
def tiny_bart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bart(tmp_path_factory.mktemp("tiny-bart"))


@pytest.fixture(autouse=True)
def fresh_accelerate_state() -> Any:
    """accelerate keeps one mixed-precision state per process and silently keeps the first it saw: a
    test must not train in the precision of the test before it."""
    yield
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state()  # the process group (PartialState) is kept
    GradientState._reset_state()


CPU_BF16 = {"bf16-hidden": "0", "bf16-detected": "1"}


@pytest.fixture(params=list(CPU_BF16))
def cpu_bf16(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Runs a test twice: once as on a CPU without native bf16, once as on one with it (where
    `train.precision: auto` picks bf16). Exactness tests use it to show their pinned precision holds on
    every machine. Through the environment, so subprocesses (torchrun, the CLI) see it too."""
    from tunelab.models.precision import CPU_BF16_ENV

    monkeypatch.setenv(CPU_BF16_ENV, CPU_BF16[request.param])
    return str(request.param)


# bf16 tolerances (docs/decisions.md, "Same numbers on every machine"). bf16 keeps 8 significant bits, so
# one rounding moves a value by at most BF16_U of itself. Two computations that are equal in exact
# arithmetic but round in other places (other batch shapes, packing, split micro-batches, processes):
# - scalar summaries (a loss or a gradient norm: a mean or norm over many rounded terms, accumulated in
#   float32) may differ by BF16_U relative: at most one rounding's worth, though the errors of the
#   terms mostly cancel;
# - a gradient tensor by 2 * BF16_U in relative norm: each side's rounding error, added;
# - weights after AdamW are not compared element by element: Adam divides each gradient component by
#   its own size, so one whose sign is within rounding of zero moves by +-lr either way. The losses and
#   gradient norms the weights lead to are compared instead.
BF16_U = 2.0**-8


# Tests that assert exact numbers use it: `pytestmark = exact` in a module, or `@exact` on a test.
exact = pytest.mark.usefixtures("cpu_bf16")


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def chat_llama(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny Llama with a chat template of its own, as an instruct base ships."""
    from transformers import AutoTokenizer

    from tunelab.data.templates import CHATML

    folder = tmp_path_factory.mktemp("chat-llama") / "model"
    shutil.copytree(tiny_llama, folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def tokenizer() -> Any:
    return build_tokenizer()


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


CHATS = [
    {
        "messages": [
            {"role": "user", "content": "Hello there!"},
            {"role": "assistant", "content": "Good morning."},
        ]
    },
    {
        "messages": [
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Where is my order?"},
            {"role": "assistant", "content": "It was due on Monday."},
            {"role": "user", "content": "Can you block my card?"},
            {"role": "assistant", "content": "Yes, I lost nothing: your card is blocked."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Check my balance"},
            {"role": "assistant", "content": "Shown on home."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Transfer fifty"},
            {"role": "assistant", "content": "Done, 50 sent."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "How are you?"},
            {"role": "assistant", "content": "Good, thank you!"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "quick brown fox"},
            {"role": "assistant", "content": "lazy dog"},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Count: 1 2 3"},
            {"role": "assistant", "content": "4 5 6 7 8 9 10"},
        ]
    },
    {"messages": [{"role": "user", "content": "Lost card"}, {"role": "assistant", "content": "Blocked it."}]},
]

VAL_CHATS = [
    {
        "messages": [
            {"role": "user", "content": "Is my card blocked?"},
            {"role": "assistant", "content": "Yes it is."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Send 10 to Anna"},
            {"role": "assistant", "content": "Sent 10."},
        ]
    },
    {
        "messages": [
            {"role": "user", "content": "Good morning"},
            {"role": "assistant", "content": "Morning! How can I help?"},
        ]
    },
]

LABELED = [
    {"text": "what is my balance", "label": "balance"},
    {"text": "how much money do I have", "label": "balance"},
    {"text": "send fifty dollars to my savings", "label": "transfer"},
    {"text": "transfer 100 to Anna", "label": "transfer"},
    {"text": "I lost my card", "label": "card"},
    {"text": "block my card please", "label": "card"},
    {"text": "my balance today?", "label": "balance"},
    {"text": "please transfer money", "label": "transfer"},
]

VAL_LABELED = [
    {"text": "balance please", "label": "balance"},
    {"text": "wire 20 euros to Tom", "label": "transfer"},
    {"text": "someone stole my card", "label": "card"},
    {"text": "how much is left in my account", "label": "balance"},
]


def make_recipe(tmp_path: Path, model_dir: Path, task: str, **sections: dict[str, Any]) -> Path:
    """Write data and a recipe into tmp_path; `sections` update the recipe's sections."""
    if task == "sft":
        train = write_jsonl(tmp_path / "train.jsonl", CHATS)
        val = write_jsonl(tmp_path / "val.jsonl", VAL_CHATS)
    else:
        train = write_jsonl(tmp_path / "train.jsonl", LABELED)
        val = write_jsonl(tmp_path / "val.jsonl", VAL_LABELED)
    recipe: dict[str, Any] = {
        "name": f"tiny-{task}",
        "task": task,
        "model": {"name": str(model_dir)},
        "data": {"train": str(train), "validation": str(val)},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {
            "epochs": 2,
            "batch_size": 2,
            "grad_accum": 2,
            "lr": 1e-2,
            "max_seq_len": 64,
            "eval_every": 2,
            "save_every": 2,
            "log_every": 1,
            "keep_last": 10,
            "seed": 7,
            # Pinned, not auto: exact-number tests must not change with the CPU (auto is bf16 where the
            # CPU has native bf16). The bf16 paths have their own tests, with bf16 tolerances.
            "precision": "fp32",
        },
        "output": {"dir": str(tmp_path / "runs")},
    }
    for section, values in sections.items():
        if section != "method" and isinstance(values, dict) and isinstance(recipe.get(section), dict):
            recipe[section] = {**recipe[section], **values}
        else:
            recipe[section] = values
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def only_run_dir(root: Path) -> Path:
    """The one run folder under root/runs (the hidden temporary folders of atomic writes aside)."""
    (run_dir,) = [p for p in (root / "runs").iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run_dir


def crash_at_checkpoint(monkeypatch: pytest.MonkeyPatch, exc: BaseException, at_step: int) -> None:
    """`checkpoint.save_checkpoint` raises `exc` right after writing the step-`at_step` checkpoint, as
    a power cut (or Ctrl-C) would leave a run; `monkeypatch.undo()` restores it."""
    from tunelab.training import checkpoint

    real_save = checkpoint.save_checkpoint

    def save(accelerator: Any, root: Path, step: int, keep_last: int) -> Path:
        path = real_save(accelerator, root, step, keep_last)
        if step == at_step:
            raise exc
        return path

    monkeypatch.setattr(checkpoint, "save_checkpoint", save)


def train_in_processes(recipe: Path, nproc: int) -> subprocess.CompletedProcess[str]:
    """`tunelab train RECIPE --nproc N`, as a user runs it (torchrun, gloo on CPU); it must succeed."""
    proc = subprocess.run(
        [sys.executable, "-m", "tunelab", "train", str(recipe), "--nproc", str(nproc)],
        capture_output=True, text=True, env=dict(os.environ), timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def random_labelled_examples(n: int = 8, seed: int = 0) -> list[dict]:
    """Random token ids, 5..30 long; labels on one or two spans, as a chat's assistant turns would be."""
    from tunelab.data.tokenize import IGNORE_INDEX

    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        length = rng.randint(5, 30)
        ids = [rng.randrange(10, 300) for _ in range(length)]
        labels = [IGNORE_INDEX] * length
        for _ in range(rng.randint(1, 2)):
            start = rng.randrange(0, length - 1)
            end = rng.randint(start + 1, length)
            labels[start:end] = ids[start:end]
        labels[-1] = ids[-1]  # at least one target, as tokenize_chats guarantees
        examples.append({"input_ids": ids, "labels": labels})
    return examples


def as_if_from_a_terminal() -> None:
    """preexec_fn of a training subprocess: Ctrl-C as a terminal's foreground process has it (a test run
    started in a script's background has SIGINT ignored, and its children would inherit that)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)
