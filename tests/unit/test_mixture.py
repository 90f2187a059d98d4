"""Multi-dataset sampling: shares hold in every window, orders are reproducible, progressive ramps."""

from __future__ import annotations

from collections import Counter

import pytest

from tunelab.data.mixture import Group, epoch_order, plan, shares


def groups_of(sizes: dict[str, int], weights: dict[str, float] | None = None, replay: str | None = None):
    groups, start = [], 0
    for name, size in sizes.items():
        indices = list(range(start, start + size))
        groups.append(Group(name, indices, (weights or {}).get(name, 1.0), name == replay))
        start += size
    task_of = [g.name for g in groups for _ in g.indices]
    return groups, task_of


def test_one_epoch_without_replay_draws_every_row_exactly_weight_times() -> None:
    groups, task_of = groups_of({"a": 30, "b": 10}, weights={"a": 1.0, "b": 2.0})
    mix = plan(groups)
    order = epoch_order(groups, mix, seed=1, epoch=0, epochs=1)
    assert len(order) == 30 + 2 * 10
    counts = Counter(order)
    assert all(counts[i] == 1 for i in range(30))  # dataset a: each row once
    assert all(counts[i] == 2 for i in range(30, 40))  # dataset b, weight 2: each row twice
    assert shares(order, task_of) == pytest.approx({"a": 0.6, "b": 0.4})


def test_temperature_lifts_the_small_dataset() -> None:
    groups, _ = groups_of({"big": 900, "small": 100})
    proportional = plan(groups).new_shares
    tempered = plan(groups, strategy="temperature", temperature=2.0).new_shares
    assert proportional == pytest.approx({"big": 0.9, "small": 0.1})
    # (900^0.5, 100^0.5) = (30, 10) -> 0.75 / 0.25
    assert tempered == pytest.approx({"big": 0.75, "small": 0.25})


def test_the_replay_ratio_holds_in_every_window_of_fifty_draws() -> None:
    groups, task_of = groups_of({"new": 120, "replay": 500}, replay="replay")
    mix = plan(groups, replay_ratio=0.2)
    order = epoch_order(groups, mix, seed=3, epoch=0, epochs=1)
    assert len(order) == 150  # 120 new rows once each, plus a quarter as many replay draws on top
    for start in range(0, len(order) - 50 + 1, 10):
        window = shares(order[start : start + 50], task_of)
        assert window["replay"] == pytest.approx(0.2, abs=0.02)
    assert Counter(order[i] for i in range(150) if task_of[order[i]] == "new") == Counter(range(120))


def test_progressive_ramps_the_new_share_from_start_to_end() -> None:
    groups, task_of = groups_of({"new": 200, "replay": 400}, replay="replay")
    mix = plan(groups, progressive=(0.2, 0.8))
    order = epoch_order(groups, mix, seed=0, epoch=0, epochs=1)
    first, last = order[: len(order) // 10], order[-len(order) // 10 :]
    assert shares(first, task_of)["new"] == pytest.approx(0.23, abs=0.04)  # ~0.2 + ramp over the window
    assert shares(last, task_of)["new"] == pytest.approx(0.77, abs=0.04)
    assert shares(order, task_of)["new"] == pytest.approx(0.5, abs=0.02)


def test_orders_are_a_pure_function_of_seed_and_epoch() -> None:
    groups, _ = groups_of({"a": 17, "b": 5, "replay": 40}, replay="replay")
    mix = plan(groups, replay_ratio=0.3)
    assert epoch_order(groups, mix, 5, 1, 3) == epoch_order(groups, mix, 5, 1, 3)
    assert epoch_order(groups, mix, 5, 1, 3) != epoch_order(groups, mix, 5, 2, 3)
    assert epoch_order(groups, mix, 5, 1, 3) != epoch_order(groups, mix, 6, 1, 3)
