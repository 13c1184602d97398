"""Segmentation losses: hand-checked Dice, CE against torch, ignore labels, deep supervision."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from medlens.tasks.segmentation.losses import (
    DeepSupervisionLoss,
    DiceCELoss,
    deep_supervision_weights,
    soft_dice_loss,
)


def _logits_for(labels: torch.Tensor, classes: int, scale: float = 50.0) -> torch.Tensor:
    return F.one_hot(labels, classes).movedim(-1, 1).float() * scale


def test_perfect_prediction_has_zero_dice_loss_and_disjoint_has_one():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:5, 2:5] = 1
    assert soft_dice_loss(_logits_for(labels, 2), labels) == pytest.approx(0.0, abs=1e-4)
    wrong = 1 - labels
    assert soft_dice_loss(_logits_for(wrong, 2), labels) == pytest.approx(1.0, abs=1e-4)


def test_soft_dice_by_hand():
    labels = torch.tensor([[0, 1, 1, 0]])
    probs_fg = torch.tensor([0.5, 0.8, 0.6, 0.1])
    logits = torch.stack([torch.zeros(4), torch.log(probs_fg / (1 - probs_fg))])[None]
    expected = 1 - (2 * (0.8 + 0.6)) / (probs_fg.sum() + 2)
    assert soft_dice_loss(logits, labels, smooth=0.0) == pytest.approx(float(expected), rel=1e-5)


def test_cross_entropy_part_matches_torch_and_ignores_labels():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 6, 5, 4)
    labels = torch.randint(0, 3, (2, 6, 5, 4))
    ce_only = DiceCELoss(dice_weight=0.0)
    assert ce_only(logits, labels) == pytest.approx(
        float(F.cross_entropy(logits, labels)), rel=1e-5
    )
    labels[0, :3] = 255  # unlabelled region
    ce_ignore = DiceCELoss(dice_weight=0.0, ignore_index=255)
    expected = F.cross_entropy(logits, labels, ignore_index=255)
    assert ce_ignore(logits, labels) == pytest.approx(float(expected), rel=1e-5)
    # what the network predicts in the ignored region changes neither term
    changed = logits.clone()
    changed[0, :, :3] = torch.randn_like(changed[0, :, :3]) * 10
    full = DiceCELoss(ignore_index=255)
    assert full(changed, labels) == pytest.approx(float(full(logits, labels)), rel=1e-5)


def test_focal_variant_reduces_to_ce_at_gamma_zero_and_downweights_easy_voxels():
    torch.manual_seed(1)
    logits = torch.randn(2, 2, 8, 8)
    labels = torch.randint(0, 2, (2, 8, 8))
    plain = DiceCELoss(dice_weight=0.0)(logits, labels)
    assert DiceCELoss(dice_weight=0.0, focal_gamma=0.0)(logits, labels) == pytest.approx(
        float(plain)
    )
    assert DiceCELoss(dice_weight=0.0, focal_gamma=2.0)(logits, labels) < plain


def test_deep_supervision_weights_and_targets():
    assert deep_supervision_weights(1) == [1.0]
    weights = deep_supervision_weights(4)
    assert weights[-1] > 0.0 and sum(weights) == pytest.approx(1.0)
    assert weights[0] == pytest.approx(2 * weights[1])
    labels = torch.zeros(1, 16, 16, dtype=torch.long)
    labels[:, 4:12, 4:12] = 1
    outputs = [_logits_for(labels, 2), _logits_for(labels[:, ::2, ::2], 2),
               _logits_for(labels[:, ::4, ::4], 2)]  # fmt: skip
    loss = DeepSupervisionLoss(DiceCELoss())
    assert loss(outputs, labels) < 0.01  # every level right: targets were resized to match
    outputs[1] = _logits_for(1 - labels[:, ::2, ::2], 2)
    assert loss(outputs, labels) > 0.3
    assert loss(outputs[0], labels) < 0.01  # a plain tensor (eval mode) is the plain loss


def test_gradients_flow():
    logits = torch.randn(1, 3, 4, 4, 4, requires_grad=True)
    labels = torch.randint(0, 3, (1, 4, 4, 4))
    DiceCELoss()(logits, labels).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


def test_the_plan_chooses_the_loss():
    from medlens.errors import MedlensError
    from medlens.tasks.segmentation.plan import make_plan
    from medlens.tasks.segmentation.train import _loss

    fp = {"task": "segmentation", "name": "x", "spatial_dims": 2, "spacing": {"median": [1, 1]},
          "size": {"median": [64, 64]}, "label_values": [0, 1]}  # fmt: skip
    plan = make_plan(fp)
    loss = _loss(plan)
    assert loss.batch_dice and loss.focal_gamma is None
    plan = plan.with_overrides(["train.loss=dice_focal", "batch_dice=false", "focal_gamma=1.5"])
    loss = _loss(plan)
    assert not loss.batch_dice and loss.focal_gamma == 1.5
    with pytest.raises(MedlensError, match=r"train\.loss"):
        plan.with_overrides(["train.loss=dice_bce"])
