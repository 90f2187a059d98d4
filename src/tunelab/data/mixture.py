"""Multi-dataset sampling: which dataset each training draw comes from, as a pure function of the epoch.

Why our own instead of `datasets.interleave_datasets`: the order must be a pure function of (seed,
epoch) so exact resume keeps working (the loop skips to a position without reading data), and the
share of each dataset must hold in *every* stretch of training, not only on average: a replay ratio of
0.2 should be 0.2 in each logging window, which random sampling of small windows does not give. So the
dataset of each draw is chosen deterministically, by largest deficit against its target share
("smooth weighted round robin"), and the examples *within* a dataset come in a seeded random order,
cycling when a dataset is drawn more often than it has rows.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from tunelab.config import DataConfig

REPLAY = "replay"  # the task name of replay rows


@dataclass(frozen=True)
class Group:
    name: str
    indices: list[int]  # positions of this dataset's rows in the training list
    weight: float = 1.0
    replay: bool = False


@dataclass(frozen=True)
class MixPlan:
    """Target shares of the new datasets (among themselves), the replay share over training, and length."""

    new_shares: dict[str, float]
    replay_share: Callable[[float], float]  # training progress in [0, 1] -> share of draws from replay
    draws_per_epoch: int


def plan(
    groups: Sequence[Group],
    *,
    strategy: str = "proportional",
    temperature: float = 1.0,
    replay_ratio: float | None = None,
    progressive: tuple[float, float] | None = None,
) -> MixPlan:
    """Shares: proportional to weight x rows, or that to the power 1/T (temperature sampling, as in mT5).

    One epoch is as many draws as the new datasets' weighted rows, plus replay draws on top, so every
    new row is seen about `weight` times per epoch whatever the replay share.
    """
    new = [g for g in groups if not g.replay]
    sizes = {g.name: g.weight * len(g.indices) for g in new}
    exponent = 1.0 if strategy == "proportional" else 1.0 / temperature
    raw = {name: size**exponent for name, size in sizes.items()}
    total = sum(raw.values())
    new_shares = {name: value / total for name, value in raw.items()}
    new_draws = sum(sizes.values())
    if progressive is not None:
        start, end = progressive

        def replay_share(progress: float) -> float:
            return 1.0 - (start + (end - start) * progress)

        mean_new = (start + end) / 2
    else:
        ratio = replay_ratio or 0.0

        def replay_share(progress: float) -> float:
            return ratio

        mean_new = 1.0 - ratio
    has_replay = any(g.replay for g in groups)
    draws = new_draws / mean_new if has_replay else new_draws
    return MixPlan(new_shares, replay_share if has_replay else (lambda _p: 0.0), max(1, round(draws)))


def epoch_order(groups: Sequence[Group], mix: MixPlan, seed: int, epoch: int, epochs: float) -> list[int]:
    """The training-row positions drawn in this epoch, in order.

    `epochs` (the run's total, possibly fractional) places each draw on the progress axis of a
    progressive schedule; the shares of the constant schedule do not depend on it.
    """
    streams = {g.name: _Cycle(g.indices, seed, epoch, i) for i, g in enumerate(groups)}
    replay = next((g.name for g in groups if g.replay), None)
    credit = dict.fromkeys(streams, 0.0)
    order: list[int] = []
    n = mix.draws_per_epoch
    for i in range(n):
        progress = min(1.0, (epoch + (i + 0.5) / n) / max(epochs, 1e-9))
        replay_share = mix.replay_share(progress)
        targets = {name: share * (1.0 - replay_share) for name, share in mix.new_shares.items()}
        if replay is not None:
            targets[replay] = replay_share
        for name, share in targets.items():  # everyone earns its share; the most owed is drawn
            credit[name] += share
        chosen = max(targets, key=lambda name: (credit[name], -list(streams).index(name)))
        credit[chosen] -= 1.0
        order.append(streams[chosen].next())
    return order


class _Cycle:
    """A dataset's rows in a seeded random order, reshuffled each time it runs out."""

    def __init__(self, indices: list[int], seed: int, epoch: int, group: int) -> None:
        self.indices = indices
        self.seed = seed * 1_000_003 + epoch * 1_009 + group
        self.round = 0
        self.order: list[int] = []

    def next(self) -> int:
        if not self.order:
            generator = torch.Generator().manual_seed(self.seed + 7919 * self.round)
            self.order = [self.indices[i] for i in torch.randperm(len(self.indices), generator=generator)]
            self.order.reverse()  # pop() from the end is O(1); reversing keeps the drawn order
            self.round += 1
        return self.order.pop()


def shares(order: Sequence[int], task_of: Sequence[str]) -> dict[str, float]:
    """Each dataset's share of the draws in `order` (for reports and tests)."""
    counts: dict[str, int] = {}
    for index in order:
        counts[task_of[index]] = counts.get(task_of[index], 0) + 1
    return {name: count / len(order) for name, count in sorted(counts.items())} if order else {}


class MixedOrder:
    """The training order of a multi-dataset run, as MicroBatches' `order_fn(epoch)`: each example's
    dataset is its `dataset` tag (REPLAY for replay data), weighted as `data` says."""

    def __init__(self, data: DataConfig, train: Sequence[dict[str, Any]], seed: int, epochs: float) -> None:
        from tunelab.config import source_name

        names = [str(example.get("dataset", "")) for example in train]
        weights = {source_name(s): s.weight for s in data.sources}
        self.groups = [
            Group(name, [i for i, n in enumerate(names) if n == name], weights.get(name, 1.0), name == REPLAY)
            for name in dict.fromkeys(names)
        ]
        self.plan = plan(
            self.groups,
            strategy=data.mixing.strategy,
            temperature=data.mixing.temperature,
            replay_ratio=data.replay.ratio if data.replay else None,
            progressive=(data.progressive.start, data.progressive.end) if data.progressive else None,
        )
        self.seed = seed
        self.epochs = epochs  # a progressive schedule places each draw on the run's whole length

    def __call__(self, epoch: int) -> list[int]:
        return epoch_order(self.groups, self.plan, self.seed, epoch, self.epochs)

    def describe(self) -> dict[str, Any]:
        return {
            "draws_per_epoch": self.plan.draws_per_epoch,
            "shares_of_new_data": self.plan.new_shares,
            "replay_share_start": self.plan.replay_share(0.0),
            "replay_share_end": self.plan.replay_share(1.0),
        }
