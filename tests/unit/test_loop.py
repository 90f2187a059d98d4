"""Loop invariants: accumulated micro-batches equal the full batch; the data order is resumable."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from accelerate import Accelerator
from transformers import AutoModelForCausalLM

from tests.conftest import CHATS, exact, write_jsonl
from tunelab.config import EarlyStopping, TrainConfig
from tunelab.data.formats import load_split
from tunelab.data.templates import ensure_chat_template
from tunelab.data.tokenize import LengthPolicy, collate, tokenize_chats
from tunelab.errors import RecipeError
from tunelab.training.loop import (
    Hooks,
    MicroBatches,
    TrainState,
    _evaluate_and_maybe_stop,
    accumulate_gradients,
)
from tunelab.training.objectives import CAUSAL_LM_OBJECTIVE


@pytest.fixture
def examples(tmp_path: Path, tokenizer: Any) -> list[dict]:
    ensure_chat_template(tokenizer)
    chats = load_split(write_jsonl(tmp_path / "c.jsonl", CHATS)).records
    examples, _ = tokenize_chats(tokenizer, chats, LengthPolicy(max_seq_len=64))
    assert len(examples) == 8
    return examples


def gradients_and_loss(model_dir: Path, micro_batches: list[dict]) -> tuple[float, dict[str, torch.Tensor]]:
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    accelerator = Accelerator(cpu=True)
    result = accumulate_gradients(model, CAUSAL_LM_OBJECTIVE, micro_batches, accelerator)
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return result.loss, grads


@exact
def test_four_micro_batches_of_two_equal_one_batch_of_eight(tiny_llama: Path, examples: list[dict]) -> None:
    full_loss, full_grads = gradients_and_loss(tiny_llama, [collate(examples, 1)])
    micro = [collate(examples[i : i + 2], 1) for i in range(0, 8, 2)]
    acc_loss, acc_grads = gradients_and_loss(tiny_llama, micro)

    assert acc_loss == pytest.approx(full_loss, abs=1e-6)
    assert full_grads.keys() == acc_grads.keys() and len(full_grads) > 0
    for name, grad in full_grads.items():
        torch.testing.assert_close(acc_grads[name], grad, atol=1e-6, rtol=0, msg=name)

    # The test can fail: the common mean-of-micro-batch-means differs, because the micro-batches
    # hold different numbers of assistant tokens.
    objective = CAUSAL_LM_OBJECTIVE
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    with torch.no_grad():
        means = [float(objective.loss(model, b).loss_sum) / objective.count_targets(b) for b in micro]
    assert abs(sum(means) / len(means) - full_loss) > 1e-3


@exact
def test_the_step_loss_is_pinned_on_the_tiny_model(tiny_llama: Path, examples: list[dict]) -> None:
    # Exact value on the seeded tiny Llama: any change to masking, shifting or normalisation moves it.
    loss, _ = gradients_and_loss(tiny_llama, [collate(examples, 1)])
    assert loss == pytest.approx(6.012148, abs=1e-5)


class FakeAccelerator:
    def __init__(self, rank: int = 0, world: int = 1):
        self.process_index, self.num_processes, self.device = rank, world, torch.device("cpu")


def indices_of(batches: MicroBatches, state: TrainState, n: int) -> list[list[int]]:
    out = []
    for _ in range(n):
        batch = batches.next(state)
        out.append(batch["input_ids"][:, 0].tolist())  # the examples below are [[i]]: the id is the index
    return out


def test_each_epoch_is_a_seeded_permutation_and_resume_continues_it() -> None:
    data = [{"input_ids": [i]} for i in range(10)]
    batches = MicroBatches(data, batch_size=3, seed=5, pad_token_id=0, accelerator=FakeAccelerator())
    assert batches.per_epoch == 4
    state = TrainState()
    seen = indices_of(batches, state, 8)
    epoch0 = sorted(i for batch in seen[:4] for i in batch)
    epoch1 = sorted(i for batch in seen[4:] for i in batch)
    assert epoch0 == epoch1 == list(range(10))
    assert seen[:4] != seen[4:]  # reshuffled each epoch
    assert state.epoch == 2 and state.batch_in_epoch == 0

    # A fresh stream (a resumed process) at a saved position continues exactly where the first was.
    resumed_state = TrainState(epoch=1, batch_in_epoch=2)
    fresh = MicroBatches(data, batch_size=3, seed=5, pad_token_id=0, accelerator=FakeAccelerator())
    assert indices_of(fresh, resumed_state, 2) == seen[6:8]


def test_processes_get_disjoint_shards_of_equal_length() -> None:
    data = [{"input_ids": [i]} for i in range(7)]
    shards = [
        MicroBatches(data, 2, seed=1, pad_token_id=0, accelerator=FakeAccelerator(rank, 2)).epoch_order(0)
        for rank in (0, 1)
    ]
    assert len(shards[0]) == len(shards[1]) == 2
    flat = [i for shard in shards for batch in shard for i in batch]
    assert sorted(set(flat)) == list(range(7))  # every example seen; one repeated to even out the shards


@pytest.mark.parametrize(
    ("metric", "values", "stops_after"),
    [
        ("val_loss", [1.0, 0.9, 0.95, 0.91, 0.92], 5),
        ("val_loss", [1.0, 0.9, 0.8, 0.7, 0.6], None),
        ("val_accuracy", [0.5, 0.6, 0.6, 0.55, 0.7], None),
        ("val_accuracy", [0.5, 0.6, 0.6, 0.55, 0.59], 5),
        # Higher is better though no accuracy: read as a loss it would stop at the 4th pass.
        ("val_reward_margin", [0.1, 0.3, 0.2, 0.25, 0.29], 5),
        ("val_reward_margin", [0.1, 0.2, 0.3, 0.4, 0.5], None),
        ("val_chat_perplexity", [9.0, 8.0, 8.5, 8.2, 8.1], 5),  # a dataset's own: lower is better
    ],
)
def test_early_stopping_counts_evaluations_without_improvement(
    metric: str, values: list[float], stops_after: int | None
) -> None:
    cfg = TrainConfig(early_stopping=EarlyStopping(metric=metric, patience=3))
    feed = iter(values)
    hooks = Hooks(
        evaluate=lambda: {metric: next(feed)},
        save_checkpoint=print,
        log=lambda s, m: None,
        progress=lambda *a: None,
    )
    state = TrainState()
    stopped_at = None
    for i in range(len(values)):
        _evaluate_and_maybe_stop(hooks, cfg, state)
        if state.stopped_early:
            stopped_at = i + 1
            break
    assert stopped_at == stops_after


def padding_of(batches: list[list[int]], lengths: list[int]) -> int:
    return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)


def test_length_grouping_cuts_padding_and_keeps_the_epoch_a_seeded_permutation() -> None:
    lengths = [int(x) for x in torch.randint(1, 200, (400,), generator=torch.Generator().manual_seed(0))]
    data = [{"input_ids": [0] * n} for n in lengths]

    def order(group: bool, seed: int = 3, epoch: int = 0, world: int = 1, rank: int = 0) -> list[list[int]]:
        stream = MicroBatches(data, 4, seed, 0, FakeAccelerator(rank, world), group_by_length=group)
        return stream.epoch_order(epoch)

    grouped, plain = order(True), order(False)
    assert sorted(i for b in grouped for i in b) == list(range(400))  # every example once per epoch
    assert padding_of(grouped, lengths) < padding_of(plain, lengths) / 5
    assert max(lengths[i] for i in grouped[0]) == max(lengths)  # the longest batch comes first
    assert order(True) == order(True) and order(True, epoch=1) != grouped and order(True, seed=4) != grouped
    # Sorting happens on global batches, before sharding: 2 processes of batch 4 see, step by step,
    # the examples of one process of batch 8.
    single = MicroBatches(data, 8, 3, 0, FakeAccelerator(), group_by_length=True).epoch_order(0)
    rank0, rank1 = order(True, world=2, rank=0), order(True, world=2, rank=1)
    assert [sorted(a + b) for a, b in zip(rank0, rank1, strict=True)] == [sorted(s) for s in single]


def test_length_grouping_forms_the_same_optimizer_batches_however_they_are_split() -> None:
    # Raising grad_accum to fit memory (or adding processes) must not change which examples meet in
    # an optimizer step: grouping works on whole optimizer batches, then cuts them.
    lengths = [int(x) for x in torch.randint(1, 200, (203,), generator=torch.Generator().manual_seed(1))]
    data = [{"input_ids": [i] * n, "labels": [i] * n} for i, n in enumerate(lengths)]  # ids name the example

    def steps(batch: int, accum: int, world: int) -> list[list[int]]:
        streams = [
            MicroBatches(
                data, batch, 9, 0, FakeAccelerator(rank, world), group_by_length=True, grad_accum=accum
            )
            for rank in range(world)
        ]
        states = [TrainState() for _ in streams]
        out = []
        while states[0].epoch == 0:  # one epoch, step by step, as the loop draws it
            drawn = [s.next_step(state) for s, state in zip(streams, states, strict=True)]
            out.append(sorted(int(i) for rank in drawn for b in rank for i in b["input_ids"][:, 0]))
        return out

    one_big = steps(8, 1, 1)
    assert len(one_big) == 26 and len(one_big[-1]) == 203 - 25 * 8  # the last step: the epoch's rest
    assert steps(2, 4, 1) == one_big
    assert steps(4, 2, 1) == one_big
    # Several processes: the same full steps (the last, partial one is padded by wrapping to the start
    # of the epoch, so every process gets as many batches).
    assert steps(2, 2, 2)[:25] == one_big[:25]
    assert steps(4, 1, 2)[:25] == one_big[:25]


def test_a_watched_metric_the_validation_pass_did_not_log_is_named() -> None:
    cfg = TrainConfig(early_stopping=EarlyStopping(metric="val_chat_loss", patience=3))
    hooks = Hooks(
        evaluate=lambda: {"val_loss": 1.0, "val_perplexity": 2.7},
        save_checkpoint=print,
        log=lambda s, m: None,
        progress=lambda *a: None,
    )
    with pytest.raises(RecipeError) as caught:
        _evaluate_and_maybe_stop(hooks, cfg, TrainState())
    assert caught.value.message == "train.early_stopping.metric: the validation pass logged no val_chat_loss"
    assert caught.value.fix == "watch one of val_loss, val_perplexity"
