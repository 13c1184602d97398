"""The model zoo: 2D/3D networks built by name with :func:`create_model`.

Every classification model is a :class:`Backbone` (``forward_features`` -> feature map,
``forward_head`` -> logits, ``feature_layer`` for Grad-CAM hooks, ``feature_info`` and
``forward_intermediates`` for multi-scale heads), written on ``torch.nn`` for both 2D and 3D;
``norm="group"`` or ``"instance"`` swaps every batch norm (for differential privacy)::

    model = create_model("resnet18", spatial_dims=3, in_channels=1, num_classes=2, input_size=28)

Segmentation models (``list_models(task="segmentation")``: ``"unet"``, ``"resunet"``) are
:class:`UNet` s built from a plan's features, strides and kernel sizes.

The model modules are imported below by name: importing them is what registers their models,
so the registry never depends on what else happens to be imported.
"""

from __future__ import annotations

from medlens.models.base import Backbone, count_parameters
from medlens.models.denoiser import DenoisingUNet
from medlens.models.densenet import DenseNet, densenet121
from medlens.models.edsr import EDSR
from medlens.models.fcos import FCOS
from medlens.models.registry import TASKS, create_model, list_models, model_task, register_model
from medlens.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    resnet10,
    resnet18,
    resnet34,
    resnet50,
)
from medlens.models.small_cnn import SmallCNN, smallcnn
from medlens.models.temporal import ConvRNN, SequenceNet, TemporalConv, TemporalUNet

# Not the builders unet/resunet: as package attributes they would hide the unet module.
from medlens.models.unet import UNet, deep_supervision_weights, downsample_targets, stage_features

__all__ = [
    "EDSR",
    "FCOS",
    "TASKS",
    "Backbone",
    "BasicBlock",
    "Bottleneck",
    "ConvRNN",
    "DenoisingUNet",
    "DenseNet",
    "ResNet",
    "SequenceNet",
    "SmallCNN",
    "TemporalConv",
    "TemporalUNet",
    "UNet",
    "count_parameters",
    "create_model",
    "deep_supervision_weights",
    "densenet121",
    "downsample_targets",
    "list_models",
    "model_task",
    "register_model",
    "resnet10",
    "resnet18",
    "resnet34",
    "resnet50",
    "smallcnn",
    "stage_features",
]
