"""Denoising diffusion: the noise schedule, the training target, and DDPM and DDIM sampling.

A :class:`NoiseSchedule` of ``steps`` steps holds ``alpha_bar[t]``, the share of signal variance
left after ``t + 1`` noising steps: ``linear`` (Ho et al. 2020, betas 1e-4 to 0.02 for 1000
steps, scaled for other step counts) or ``cosine`` (Nichol and Dhariwal 2021,
``alpha_bar(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)`` normalised, betas capped at 0.999).

* :meth:`NoiseSchedule.noise`: ``x_t = sqrt(alpha_bar) x_0 + sqrt(1 - alpha_bar) eps`` for
  training: the network learns to predict ``eps`` from ``(x_t, t[, class])``;
* :meth:`NoiseSchedule.sample`: DDIM (Song et al. 2021) over a subsequence of the steps;
  ``eta=0`` is deterministic, ``eta=1`` over every step is DDPM's ancestral sampler.

The model is any callable ``model(x_t, t, labels) -> eps`` (``t`` a long tensor ``(B,)``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from medlens.errors import MedlensError

__all__ = ["NoiseSchedule"]

Model = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class NoiseSchedule:
    """``steps`` noising steps of the ``kind`` schedule (module notes)."""

    def __init__(self, steps: int = 1000, kind: str = "cosine") -> None:
        if int(steps) < 2:
            raise MedlensError(f"a diffusion schedule needs at least 2 steps, got {steps}")
        self.steps, self.kind = int(steps), kind
        if kind == "linear":
            scale = 1000 / self.steps
            betas = torch.linspace(1e-4 * scale, 0.02 * scale, self.steps, dtype=torch.float64)
            self.alpha_bar = torch.cumprod(1 - betas, dim=0)
        elif kind == "cosine":
            s = 0.008
            t = torch.arange(self.steps + 1, dtype=torch.float64) / self.steps
            f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
            self.alpha_bar = torch.cumprod(1 - betas, dim=0)
        else:
            raise MedlensError(f"schedule {kind!r}: use linear or cosine")

    def _at(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``alpha_bar[t]`` shaped to broadcast over ``like`` ``(B, ...)``."""
        value = self.alpha_bar.to(like.device)[t].to(like.dtype)
        return value.reshape(-1, *([1] * (like.dim() - 1)))

    def noise(self, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
        """``(x_t, eps)``: ``x0`` ``(B, ...)`` noised to steps ``t`` ``(B,)``."""
        eps = torch.randn_like(x0) if eps is None else eps
        ab = self._at(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * eps, eps

    def random_steps(self, batch: int, generator: torch.Generator | None = None,
                     device: Any = None) -> torch.Tensor:  # fmt: skip
        """Training steps drawn uniformly, ``(batch,)``."""
        return torch.randint(0, self.steps, (batch,), generator=generator, device=device)

    @torch.no_grad()
    def sample(self, model: Model, shape: tuple[int, ...], *, labels: Any = None,
               sampling_steps: int | None = None, eta: float = 0.0,
               generator: torch.Generator | None = None,
               clip: float | None = None) -> torch.Tensor:  # fmt: skip
        """Samples ``shape`` from noise by DDIM over ``sampling_steps`` evenly spaced steps
        (all by default); ``eta`` 0 deterministic, 1 DDPM; ``clip`` bounds each step's estimate
        of ``x_0`` (data scaled to ``[-clip, clip]``)."""
        count = self.steps if sampling_steps is None else int(sampling_steps)
        if not 1 <= count <= self.steps:
            raise MedlensError(f"sampling_steps {count}: between 1 and {self.steps}")
        order = torch.linspace(self.steps - 1, 0, count).round().long().unique_consecutive()
        x = torch.randn(shape, generator=generator, dtype=torch.float32)
        for i, t in enumerate(order.tolist()):
            step = torch.full((shape[0],), t, dtype=torch.long)
            ab = self._at(step, x)
            eps = model(x, step, labels).to(x.dtype)
            x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
            if clip is not None:
                x0 = x0.clamp(-clip, clip)
                eps = (x - ab.sqrt() * x0) / (1 - ab).sqrt()
            if i == len(order) - 1:
                return x0
            ab_next = self._at(torch.full_like(step, int(order[i + 1])), x)
            sigma = eta * ((1 - ab_next) / (1 - ab) * (1 - ab / ab_next)).clamp(min=0).sqrt()
            direction = (1 - ab_next - sigma**2).clamp(min=0).sqrt() * eps
            fresh = torch.randn(shape, generator=generator, dtype=x.dtype) if eta > 0 else 0.0
            x = ab_next.sqrt() * x0 + direction + sigma * fresh
        return x
