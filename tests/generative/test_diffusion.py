"""The diffusion schedule and samplers against closed forms: the published schedules, the noised
marginals, and samplers that return the data exactly under an oracle noise predictor."""

from __future__ import annotations

import math

import pytest
import torch

from medlens.errors import MedlensError
from medlens.generative.diffusion import NoiseSchedule


def test_schedules_are_the_published_ones():
    linear = NoiseSchedule(1000, "linear")
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    assert torch.allclose(linear.alpha_bar, torch.cumprod(1 - betas, 0))
    cosine = NoiseSchedule(1000, "cosine")

    def f(t):
        return math.cos((t / 1000 + 0.008) / 1.008 * math.pi / 2) ** 2

    for t in (0, 10, 500, 900):
        assert float(cosine.alpha_bar[t]) == pytest.approx(f(t + 1) / f(0), rel=1e-9)
    for schedule in (linear, cosine):
        ab = schedule.alpha_bar
        assert bool((ab[1:] < ab[:-1]).all()) and float(ab[-1]) < 1e-3 and float(ab[0]) > 0.99


def test_noised_marginals_have_the_closed_form_mean_and_variance():
    schedule = NoiseSchedule(100, "cosine")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((20000, 1), 2.0)
    t = torch.full((20000,), 40, dtype=torch.long)
    eps = torch.randn(x0.shape, generator=gen)
    xt, returned = schedule.noise(x0, t, eps)
    ab = float(schedule.alpha_bar[40])
    assert torch.equal(returned, eps)
    assert float(xt.mean()) == pytest.approx(2 * math.sqrt(ab), abs=0.02)
    assert float(xt.var()) == pytest.approx(1 - ab, rel=0.03)


@pytest.mark.parametrize(("eta", "steps"), [(0.0, 25), (0.0, 100), (1.0, 100), (0.5, 10)])
def test_samplers_return_the_data_under_an_oracle(eta, steps):
    """With the exact noise of a one-point dataset (one point per class), every sampler lands
    on the point of the class asked for, from any noise."""
    schedule = NoiseSchedule(100, "linear")
    points = torch.tensor([[0.7, -0.3, 0.1, 0.9], [-0.5, 0.2, 0.8, -0.9]])

    def oracle(x, t, labels):
        ab = schedule.alpha_bar[t].float()[:, None]
        return (x - ab.sqrt() * points[labels]) / (1 - ab).sqrt()

    labels = torch.tensor([0, 1, 1, 0, 1])
    out = schedule.sample(oracle, (5, 4), labels=labels, sampling_steps=steps, eta=eta,
                          generator=torch.Generator().manual_seed(3))  # fmt: skip
    assert torch.allclose(out, points[labels], atol=1e-4)


def test_bad_settings_are_refused():
    with pytest.raises(MedlensError, match="at least 2 steps"):
        NoiseSchedule(1)
    with pytest.raises(MedlensError, match="use linear or cosine"):
        NoiseSchedule(10, "sigmoid")
    with pytest.raises(MedlensError, match="between 1 and 10"):
        NoiseSchedule(10).sample(lambda x, t, y: x, (1, 2), sampling_steps=11)


@pytest.mark.parametrize(("dims", "shape"), [(2, (28, 28)), (3, (8, 12, 8))])
def test_the_denoiser_learns_the_noise_of_two_classes(dims, shape):
    """A few hundred steps of DDPM training on two constant images (one per class): the noise
    prediction error falls well below its starting value, and at high noise, where only the
    class tells the images apart, the right label predicts the noise better than the wrong one."""
    from medlens.models import create_model

    torch.manual_seed(0)
    model = create_model("ddpm-unet", spatial_dims=dims, in_channels=1, num_classes=2,
                         features=(8, 16))  # fmt: skip
    schedule = NoiseSchedule(50, "cosine")
    images = torch.stack([torch.full((1, *shape), -0.6), torch.full((1, *shape), 0.6)])
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(200):
        labels = torch.randint(0, 2, (8,), generator=gen)
        t = schedule.random_steps(8, gen)
        xt, eps = schedule.noise(images[labels], t, torch.randn((8, 1, *shape), generator=gen))
        loss = torch.nn.functional.mse_loss(model(xt, t, labels), eps)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert sum(losses[-20:]) / 20 < 0.5 * sum(losses[:20]) / 20
    model.eval()
    labels = torch.tensor([0, 1] * 8)
    t = torch.full((16,), 45, dtype=torch.long)
    xt, eps = schedule.noise(images[labels], t, torch.randn((16, 1, *shape), generator=gen))
    with torch.no_grad():
        right = torch.nn.functional.mse_loss(model(xt, t, labels), eps)
        wrong = torch.nn.functional.mse_loss(model(xt, t, 1 - labels), eps)
    assert float(right) < float(wrong)
    out = schedule.sample(model, (2, 1, *shape), labels=torch.tensor([0, 1]), sampling_steps=10,
                          generator=gen, clip=1.0)  # fmt: skip
    assert out.shape == (2, 1, *shape) and bool(out.abs().le(1.0).all())
    with pytest.raises(ValueError, match="must divide by 2"):
        model(torch.zeros(1, 1, *[s + 1 for s in shape]), torch.zeros(1, dtype=torch.long))
