"""Multi-scale feature maps of a network: ``feature_info`` and ``forward_intermediates``.

Detection heads (FPN), dense self-supervision and feature-distillation losses need the maps of
several stages, not only the last one. Every zoo network describes its stages with timm's
``feature_info`` convention and runs them with the helpers here, so the index rules are written
once for the backbones and the U-Nets.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import TypedDict

import torch
from torch import nn

__all__ = ["FeatureInfo", "MultiScale", "feature_info", "run_stages", "take_indices"]


class FeatureInfo(TypedDict):
    """One feature stage: ``model.get_submodule(module)`` outputs it.

    Attributes:
        module: dotted name of the module whose output is the stage's feature map.
        num_chs: its channels.
        reduction: its total stride relative to the input (the largest over the axes when
            the strides are anisotropic).
    """

    module: str
    num_chs: int
    reduction: int


def feature_info(module: str, num_chs: int, reduction: int) -> FeatureInfo:
    """A :class:`FeatureInfo` entry (plain ints, so it serialises to JSON as is)."""
    return FeatureInfo(module=module, num_chs=int(num_chs), reduction=int(reduction))


def take_indices(num_stages: int, indices: int | Sequence[int] | None) -> list[int]:
    """The stages ``indices`` asks for, as sorted non-negative positions.

    Args:
        num_stages: stages the network has.
        indices: ``None`` for all of them, an int ``n`` for the last ``n``, or a sequence of
            stage positions (negative ones count from the deepest, as in Python).

    Raises:
        ValueError: ``n`` outside ``1..num_stages``, a position out of range, or an empty list.
    """

    def is_int(v: object) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)

    if indices is None:
        return list(range(num_stages))
    if is_int(indices):
        n = int(indices)  # type: ignore[arg-type]
        if not 1 <= n <= num_stages:
            raise ValueError(f"indices={n} asks for the last {n} of {num_stages} stages")
        return list(range(num_stages - n, num_stages))
    if isinstance(indices, str) or not isinstance(indices, Sequence) or not indices:
        raise ValueError(f"indices must be None, an int or a non-empty list, got {indices!r}")
    taken = set()
    for i in indices:
        if not is_int(i) or not -num_stages <= i < num_stages:
            raise ValueError(
                f"indices must be stage positions in [{-num_stages}, {num_stages - 1}] "
                f"({num_stages} stages), got {i!r}"
            )
        taken.add(int(i) % num_stages)
    return sorted(taken)


def run_stages(
    x: torch.Tensor,
    stages: Sequence[Sequence[nn.Module]],
    indices: int | Sequence[int] | None,
    stop_early: bool,
) -> list[torch.Tensor]:
    """Run ``stages`` in order and keep the outputs of those ``indices`` asks for.

    Args:
        x: the (checked) input.
        stages: per feature stage, the modules that lead from the previous stage's output to it.
        indices: see :func:`take_indices`.
        stop_early: stop after the deepest stage asked for; otherwise run all of them, as a
            full forward does (in training, later batch norms then update their statistics
            and every parameter gets a gradient path, which DDP expects).

    Returns:
        The feature maps, shallow to deep, one per distinct index.
    """
    taken = take_indices(len(stages), indices)
    last = taken[-1] if stop_early else len(stages) - 1
    out = []
    for i, stage in enumerate(stages[: last + 1]):
        for module in stage:
            x = module(x)
        if i in taken:
            out.append(x)
    return out


class MultiScale:
    """:meth:`forward_intermediates` for a network that lists its stages.

    The network sets :attr:`feature_info` (one :class:`FeatureInfo` per stage, shallow to deep)
    and implements ``_feature_stages()`` (per stage, the modules leading to it from the one
    before) and ``_check_input(x)``; the zoo's backbones and U-Nets all do.
    """

    feature_info: list[FeatureInfo]

    def _feature_stages(self) -> list[Sequence[nn.Module]]:
        raise NotImplementedError

    def _check_input(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def forward_intermediates(
        self,
        x: torch.Tensor,
        indices: int | Sequence[int] | None = None,
        stop_early: bool = False,
    ) -> list[torch.Tensor]:
        """Feature maps of several stages, e.g. for a feature pyramid or a detection head.

        Args:
            x: input ``(B, in_channels, *spatial)``.
            indices: stages of :attr:`feature_info` to return: ``None`` for all, an int ``n``
                for the last ``n``, or a list of positions (negative ones from the deepest).
            stop_early: stop after the deepest stage asked for instead of running every stage
                (which keeps every batch-norm statistic updated in training).

        Returns:
            The maps, shallow to deep whatever the order of ``indices``: stage ``i`` is
            ``(B, feature_info[i]["num_chs"], *(side / feature_info[i]["reduction"]))``
            (per axis for anisotropic strides; rounded up where a pooling rounds up).
        """
        self._check_input(x)
        return run_stages(x, self._feature_stages(), indices, stop_early)
