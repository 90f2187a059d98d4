"""Baselines for classification with the *base* encoder, scored before any training.

zero-shot: cosine similarity between a text's embedding and each label's (its name, or a description
from the recipe); few-shot: the nearest class centroid of k labelled training examples per class.
They answer the question fine-tuning must beat: how far does the pre-trained model get unaided?
Embeddings are attention-masked means of the encoder's last hidden states (what sentence encoders
such as MiniLM are trained for).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from tunelab.data.records import Chat
from tunelab.data.templates import render_chat
from tunelab.data.tokenize import Example, LengthPolicy, collate, tokenize_chats
from tunelab.evaluation.metrics import evaluate
from tunelab.training.loop import eval_batches
from tunelab.training.objectives import CAUSAL_LM_OBJECTIVE

EMBED_BATCH = 32  # texts embedded at a time by the classify baselines


@torch.no_grad()
def embed(
    encoder: Any, examples: Sequence[Example], pad_token_id: int, batch_size: int = EMBED_BATCH
) -> torch.Tensor:
    """(n, hidden) unit-length embeddings, in the order of `examples`."""
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    chunks = []
    for start in range(0, len(examples), batch_size):
        batch = collate(
            [{"input_ids": e["input_ids"]} for e in examples[start : start + batch_size]], pad_token_id
        )
        batch = {k: v.to(device) for k, v in batch.items()}
        hidden = encoder(**batch).last_hidden_state.float()
        mask = batch["attention_mask"].unsqueeze(-1).float()
        chunks.append(F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1))
    encoder.train(was_training)
    return torch.cat(chunks)


def encoder_baselines(
    model: Any,
    tokenizer: Any,
    train: Sequence[Example],
    scored: Sequence[Example],
    label_map: dict[str, int],
    *,
    prefix: str,
    k: int = 3,
    seed: int = 42,
    descriptions: dict[str, str] | None = None,
) -> dict[str, dict[str, Any]]:
    """{"zero_shot": {f"{prefix}_accuracy": ...}, "few_shot": {...}} on the `scored` examples."""
    encoder = model.base_model  # the backbone under the (new) classification head
    pad_id = tokenizer.pad_token_id
    truth = torch.tensor([e["label"] for e in scored])
    texts = embed(encoder, scored, pad_id)
    names = sorted(label_map, key=label_map.__getitem__)
    label_texts = [(descriptions or {}).get(name, name.replace("_", " ")) for name in names]
    label_vectors = embed(encoder, [{"input_ids": tokenizer(t)["input_ids"]} for t in label_texts], pad_id)
    zero_shot = (texts @ label_vectors.T).argmax(-1).cpu()
    centroids = embed_centroids(encoder, train, len(names), pad_id, k, seed)
    few_shot = (texts @ centroids.T).argmax(-1).cpu()
    zero: dict[str, Any] = {f"{prefix}_accuracy": float((zero_shot == truth).float().mean())}
    bare = [t for t in label_texts if t.strip().lstrip("-").isdigit()]
    if bare:
        # An embedding of "0" or "1" says nothing about a class: the score is kept, and said to be
        # meaningless, rather than reported as if the model knew the classes.
        zero["note"] = (
            f"labels {', '.join(bare[:4])} are bare ids: zero-shot compares texts with the strings "
            "themselves, so its score means little; set data.label_names (or eval.label_descriptions)"
        )
    return {
        "zero_shot": zero,
        "few_shot": {f"{prefix}_accuracy": float((few_shot == truth).float().mean()), "k": k},
    }


def embed_centroids(
    encoder: Any, train: Sequence[Example], n_classes: int, pad_id: int, k: int, seed: int
) -> torch.Tensor:
    """Unit-length mean embedding of k seeded training examples per class (fewer if a class has fewer)."""
    rng = random.Random(seed)
    by_class: dict[int, list[Example]] = {}
    for example in train:
        by_class.setdefault(example["label"], []).append(example)
    centroids = []
    for label in range(n_classes):
        pool = by_class.get(label, [])
        shots = rng.sample(pool, min(k, len(pool)))
        if not shots:  # a class with no training example cannot be predicted by this baseline
            centroids.append(torch.full((encoder.config.hidden_size,), float("nan")))
            continue
        centroids.append(F.normalize(embed(encoder, shots, pad_id).mean(0), dim=-1).cpu())
    return torch.nan_to_num(torch.stack(centroids), nan=-2.0).to(next(encoder.parameters()).device)


BASELINE_BATCH = 8  # conversations scored at a time (plan sizes the baselines' pass by it)


def chat_baselines(
    model: Any,
    tokenizer: Any,
    train: Sequence[Chat],
    scored: Sequence[Chat],
    policy: LengthPolicy,
    accelerator: Any,
    *,
    prefix: str,
    k: int = 3,
    seed: int = 42,
    batch_size: int = BASELINE_BATCH,
) -> dict[str, dict[str, Any]]:
    """Loss of the base causal LM on the scored answers: zero-shot (the conversation alone, through the
    chat template) and few-shot (k seeded training conversations first, as prior turns carrying no loss).
    Loss, not generated text, because it is the metric sft runs report; lower is better."""
    few, used, k_drawn = few_shot_chats(tokenizer, train, scored, k=k, seed=seed, max_len=policy.max_seq_len)
    out: dict[str, dict[str, Any]] = {}
    for name, chats in (("zero_shot", list(scored)), ("few_shot", few)):
        examples, _ = tokenize_chats(tokenizer, chats, policy)
        batches = eval_batches(examples, batch_size, tokenizer.pad_token_id, accelerator)
        scores = evaluate(model, batches, CAUSAL_LM_OBJECTIVE, "sft", accelerator, prefix=prefix)
        out[name] = {**scores, "scored": len(examples)}
    out["few_shot"]["k"] = k_drawn
    out["few_shot"]["shots_mean"] = sum(used) / max(len(used), 1)
    out["few_shot"]["shots_min"] = min(used, default=0)
    if not any(used):
        # Not a few-shot score at all: said, rather than reported under the few-shot name.
        out["few_shot"]["note"] = (
            f"no training conversation fits beside a scored one in max_seq_len {policy.max_seq_len}: "
            "this is the zero-shot score again; raise train.max_seq_len to see a few-shot baseline"
        )
    elif min(used) < k_drawn:
        out["few_shot"]["note"] = (
            f"{sum(n < k_drawn for n in used)} of {len(used)} scored conversations had room for fewer "
            f"than {k_drawn} shots (mean {out['few_shot']['shots_mean']:.2f}, fewest {min(used)})"
        )
    return out


def few_shot_chats(
    tokenizer: Any, train: Sequence[Chat], scored: Sequence[Chat], *, k: int, seed: int, max_len: int
) -> tuple[list[Chat], list[int], int]:
    """Each scored chat after k seeded training conversations (prior turns, no loss), as many as fit in
    max_len: (the chats, the shots each got, k as drawn). The loss baseline and the generated one use
    the same shots."""
    shots = random.Random(seed).sample(list(train), min(k, len(train)))
    with_shots = [_with_shots(tokenizer, chat, shots, max_len) for chat in scored]
    return [chat for chat, _ in with_shots], [n for _, n in with_shots], len(shots)


def _with_shots(tokenizer: Any, chat: Chat, shots: Sequence[Chat], max_len: int) -> tuple[Chat, int]:
    """The chat after as many shots (prior turns, no loss) as fit in max_len tokens; and that number.
    Fewer shots rather than truncation, which would cut the very answer being scored."""
    system = [m for m in chat.messages if m.role == "system"]
    turns = [m for m in chat.messages if m.role != "system"]
    for n in range(len(shots), 0, -1):
        prior = [replace(m, weight=0) for shot in shots[:n] for m in shot.messages if m.role != "system"]
        candidate = replace(chat, messages=(*system, *prior, *turns))
        if (
            len(tokenizer(render_chat(tokenizer, candidate)[0], add_special_tokens=False)["input_ids"])
            <= max_len
        ):
            return candidate, n
    return chat, 0
