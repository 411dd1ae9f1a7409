"""Config -> modules. The only place that reads the config; modules take explicit arguments."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from torch import nn

from ..config import CfgNode
from ..layers import ASPP, ShapeSpec
from ..utils.devices import resolve_device
from .backbone import (
    BasicStem,
    DeepLabStem,
    MobileNetV3,
    ResNet,
    blocks_per_stage,
    make_stage,
    stage_dilations,
)
from .heads import DeepLabV3Head, DeepLabV3PlusHead, TorchvisionDeepLabHead
from .losses import UnresolvedClassWeights, build_sem_seg_loss
from .segmentor import SemanticSegmentor

__all__ = [
    "aspp_pool_kernel_size",
    "build_backbone",
    "build_loss",
    "build_model",
    "build_sem_seg_head",
    "max_output_bytes",
]

logger = logging.getLogger(__name__)

_STAGE_INDEX = {"res2": 2, "res3": 3, "res4": 4, "res5": 5}


_BACKBONES = (
    "build_resnet_deeplab_backbone",
    "build_resnet_backbone",
    "build_mobilenet_v3_large_backbone",
)


def build_backbone(cfg: CfgNode) -> ResNet | MobileNetV3:
    """The backbone of MODEL.BACKBONE.NAME, frozen up to MODEL.BACKBONE.FREEZE_AT.

    "build_resnet_deeplab_backbone" honours STEM_TYPE, RES4_DILATION and RES5_MULTI_GRID;
    "build_resnet_backbone" is detectron2's plain ResNet (basic stem, RES5_DILATION only);
    "build_mobilenet_v3_large_backbone" is MobileNetV3-Large from MODEL.MOBILENET.
    """
    r = cfg.MODEL.RESNETS
    name = cfg.MODEL.BACKBONE.NAME
    if name == "build_mobilenet_v3_large_backbone":
        m = cfg.MODEL.MOBILENET
        backbone = MobileNetV3(
            width_mult=float(m.WIDTH_MULT),
            dilated=bool(m.DILATED),
            out_features=list(m.OUT_FEATURES),
            norm=m.NORM,
        )
        return backbone.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)
    if name == "build_resnet_deeplab_backbone":
        stem_type, res4_dilation, multi_grid = r.STEM_TYPE, r.RES4_DILATION, r.RES5_MULTI_GRID
    elif name == "build_resnet_backbone":
        stem_type, res4_dilation, multi_grid = "basic", 1, None
    else:
        raise ValueError(
            f"Unknown MODEL.BACKBONE.NAME {name!r}; use one of {', '.join(_BACKBONES)}."
        )
    stems = {"basic": BasicStem, "deeplab": DeepLabStem}
    if stem_type not in stems:
        raise ValueError(
            f"Unknown MODEL.RESNETS.STEM_TYPE {stem_type!r}; use 'basic' or 'deeplab'."
        )
    stem = stems[stem_type](in_channels=3, out_channels=r.STEM_OUT_CHANNELS, norm=r.NORM)

    dilations = stage_dilations(
        depth=r.DEPTH,
        res4_dilation=res4_dilation,
        res5_dilation=r.RES5_DILATION,
        res5_multi_grid=multi_grid,
        dilate_first_block=r.DILATE_FIRST_BLOCK,
    )
    # A dilated stage replaces its stride by dilation (its first block may still have the
    # previous stage's dilation, see DILATE_FIRST_BLOCK).
    stage_dilation = {"res2": 1, "res3": 1, "res4": res4_dilation, "res5": r.RES5_DILATION}
    unknown = [f for f in r.OUT_FEATURES if f != "stem" and f not in _STAGE_INDEX]
    if unknown:
        raise ValueError(f"Unknown MODEL.RESNETS.OUT_FEATURES {unknown}; use stem, res2..res5.")
    last_stage = max((_STAGE_INDEX[f] for f in r.OUT_FEATURES if f != "stem"), default=1)
    counts = blocks_per_stage(r.DEPTH)

    in_channels = r.STEM_OUT_CHANNELS
    out_channels = r.RES2_OUT_CHANNELS
    bottleneck_channels = r.NUM_GROUPS * r.WIDTH_PER_GROUP
    stages, strides = [], []
    for index in range(2, last_stage + 1):
        name_i = f"res{index}"
        dilation = dilations[name_i]
        # res2 keeps the stem's stride.
        first_stride = 1 if index == 2 or stage_dilation[name_i] > 1 else 2
        stages.append(
            (
                name_i,
                make_stage(
                    num_blocks=counts[index - 2],
                    in_channels=in_channels,
                    out_channels=out_channels,
                    bottleneck_channels=bottleneck_channels,
                    first_stride=first_stride,
                    dilation_per_block=dilation,
                    num_groups=r.NUM_GROUPS,
                    norm=r.NORM,
                    stride_in_1x1=r.STRIDE_IN_1X1,
                ),
            )
        )
        strides.append(first_stride)
        in_channels = out_channels
        out_channels *= 2
        bottleneck_channels *= 2
    backbone = ResNet(stem=stem, stages=stages, out_features=r.OUT_FEATURES, stage_strides=strides)
    return backbone.freeze(cfg.MODEL.BACKBONE.FREEZE_AT)


def aspp_pool_kernel_size(cfg: CfgNode, encoder_stride: int) -> tuple[int, int] | None:
    """The original's ASPP pooling window: training crop / encoder stride, or None (global).

    Raises:
        ValueError: the crop is not absolute or not divisible by the encoder stride.
    """
    crop = cfg.INPUT.CROP
    if not crop.ENABLED:
        return None
    if crop.TYPE != "absolute":
        raise ValueError(
            "The DeepLab heads size ASPP's image pooling from the training crop and need "
            f"INPUT.CROP.TYPE 'absolute', got {crop.TYPE!r}."
        )
    crop_h, crop_w = (int(v) for v in crop.SIZE)
    if crop_h % encoder_stride or crop_w % encoder_stride:
        raise ValueError(
            f"INPUT.CROP.SIZE {tuple(crop.SIZE)} must be divisible by the output stride "
            f"{encoder_stride} of the ASPP input."
        )
    return crop_h // encoder_stride, crop_w // encoder_stride


_HEADS = ("DeepLabV3Head", "DeepLabV3PlusHead", "TorchvisionDeepLabHead")


def build_sem_seg_head(cfg: CfgNode, input_shape: dict[str, ShapeSpec]) -> nn.Module:
    """DeepLabV3Head, DeepLabV3PlusHead or TorchvisionDeepLabHead from MODEL.SEM_SEG_HEAD.

    TorchvisionDeepLabHead is torchvision's layout: its ASPP pools globally whatever the training
    crop and normalises the pooling branch; ASPP_DILATIONS, ASPP_DROPOUT and NORM apply as for
    the others (torchvision: [12, 24, 36], 0.5, BN).
    """
    h = cfg.MODEL.SEM_SEG_HEAD
    missing = [f for f in h.IN_FEATURES if f not in input_shape]
    if missing:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.IN_FEATURES {missing} are not produced by the backbone "
            f"(its OUT_FEATURES, MODEL.RESNETS or MODEL.MOBILENET, give {list(input_shape)})."
        )
    if h.NAME not in _HEADS:
        raise ValueError(
            f"Unknown MODEL.SEM_SEG_HEAD.NAME {h.NAME!r}; use one of {', '.join(_HEADS)}."
        )
    shapes = {f: input_shape[f] for f in h.IN_FEATURES}
    # ASPP reads the coarsest feature (the only one for DeepLabV3).
    coarsest = max(shapes.values(), key=lambda s: s.stride)
    torchvision = h.NAME == "TorchvisionDeepLabHead"
    aspp = ASPP(
        coarsest.channels,
        h.ASPP_CHANNELS,
        list(h.ASPP_DILATIONS),
        norm=h.NORM,
        activation=nn.ReLU(),
        pool_kernel_size=None if torchvision else aspp_pool_kernel_size(cfg, coarsest.stride),
        dropout=h.ASPP_DROPOUT,
        use_depthwise_separable_conv=h.USE_DEPTHWISE_SEPARABLE_CONV,
        pooling_norm=torchvision,
    )
    if torchvision:
        return TorchvisionDeepLabHead(
            input_shape=shapes, aspp=aspp, num_classes=h.NUM_CLASSES, norm=h.NORM
        )
    if h.NAME == "DeepLabV3Head":
        return DeepLabV3Head(input_shape=shapes, aspp=aspp, num_classes=h.NUM_CLASSES)
    return DeepLabV3PlusHead(
        input_shape=shapes,
        aspp=aspp,
        project_channels=list(h.PROJECT_CHANNELS),
        num_classes=h.NUM_CLASSES,
        decoder_channels=h.CONVS_DIM,
        norm=h.NORM,
        use_depthwise_separable_conv=h.USE_DEPTHWISE_SEPARABLE_CONV,
    )


def max_output_bytes(cfg: CfgNode) -> int:
    """TEST.MAX_OUTPUT_MB in bytes (0: no limit)."""
    return max(0, int(cfg.TEST.MAX_OUTPUT_MB) * 2**20)


def build_loss(cfg: CfgNode, *, class_weights: Sequence[float] | None = None) -> nn.Module:
    """The loss of MODEL.SEM_SEG_HEAD: LOSS_TYPE, IGNORE_VALUE, TOP_K_PERCENT_PIXELS and
    CLASS_WEIGHTS.

    Args:
        cfg: the config.
        class_weights: the weights when CLASS_WEIGHTS names a method computed from the data
            (the trainer resolves it, see `atrous.engine.resolve_class_weights`); overrides
            the config's list when given.
    """
    h = cfg.MODEL.SEM_SEG_HEAD
    configured = h.CLASS_WEIGHTS
    if class_weights is not None:
        weights = [float(w) for w in class_weights]
        if len(weights) != h.NUM_CLASSES:
            raise ValueError(
                f"{len(weights)} class weights for MODEL.SEM_SEG_HEAD.NUM_CLASSES "
                f"{h.NUM_CLASSES}; give one per class"
            )
    elif isinstance(configured, str):
        # A model built for inference never calls its loss; training it without the
        # computed weights fails with what to do.
        return UnresolvedClassWeights(method=configured)
    else:
        weights = [float(w) for w in configured] if configured else None
    return build_sem_seg_loss(
        h.LOSS_TYPE,
        ignore_label=h.IGNORE_VALUE,
        top_k_percent_pixels=h.TOP_K_PERCENT_PIXELS,
        class_weights=weights,
    )


def build_model(cfg: CfgNode, *, class_weights: Sequence[float] | None = None) -> SemanticSegmentor:
    """Build the segmentor described by `cfg`, initialised as the original, on MODEL.DEVICE
    (`atrous.utils.devices.resolve_device`).

    Weights are not loaded here; use `atrous.checkpoint.Checkpointer(model).load(...)`.

    Args:
        cfg: the config.
        class_weights: the loss's class weights when MODEL.SEM_SEG_HEAD.CLASS_WEIGHTS names a
            method computed from the training data (see `build_loss`).
    """
    if cfg.MODEL.META_ARCHITECTURE != "SemanticSegmentor":
        raise ValueError(
            f"MODEL.META_ARCHITECTURE {cfg.MODEL.META_ARCHITECTURE!r} is not supported; atrous "
            "builds 'SemanticSegmentor' models."
        )
    if len(cfg.MODEL.PIXEL_MEAN) != 3 or len(cfg.MODEL.PIXEL_STD) != 3:
        raise ValueError("MODEL.PIXEL_MEAN and MODEL.PIXEL_STD need three values each.")
    backbone = build_backbone(cfg)
    head = build_sem_seg_head(cfg, backbone.output_shape())
    h = cfg.MODEL.SEM_SEG_HEAD
    if h.COMMON_STRIDE != head.output_stride:
        raise ValueError(
            f"MODEL.SEM_SEG_HEAD.COMMON_STRIDE is {h.COMMON_STRIDE} but the head's logits have "
            f"stride {head.output_stride}; set COMMON_STRIDE {head.output_stride}."
        )
    model = SemanticSegmentor(
        backbone=backbone,
        sem_seg_head=head,
        loss=build_loss(cfg, class_weights=class_weights),
        pixel_mean=cfg.MODEL.PIXEL_MEAN,
        pixel_std=cfg.MODEL.PIXEL_STD,
        common_stride=h.COMMON_STRIDE,
        num_classes=h.NUM_CLASSES,
        ignore_value=h.IGNORE_VALUE,
        loss_weight=h.LOSS_WEIGHT,
        max_output_bytes=max_output_bytes(cfg),
        # torchvision's models resize their logits to the input in one step.
        logits_at_input_size=isinstance(head, TorchvisionDeepLabHead),
    )
    # "auto" and "cuda" mean this process's current CUDA device, which the launcher set to the
    # GPU of its local rank.
    return model.to(resolve_device(cfg.MODEL.DEVICE))
