"""The segmentor: normalise and pad images, run backbone and head, then loss or post-processing.

This is the one place where training and inference differ; backbone and head are pure functions
of their inputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "OutputTooLargeError",
    "SemanticSegmentor",
    "check_batch_output_sizes",
    "check_output_size",
    "pad_to_batch",
    "sem_seg_postprocess",
]


class OutputTooLargeError(ValueError):
    """An image's prediction at its output size would exceed the budget (TEST.MAX_OUTPUT_MB)."""


def check_output_size(
    *, num_classes: int, height: int, width: int, max_bytes: int, name: str = "image"
) -> None:
    """Refuse to produce (num_classes, height, width) float32 logits larger than `max_bytes`.

    Args:
        num_classes, height, width: shape of the logits that would be returned.
        max_bytes: the budget; 0 or negative means no limit.
        name: what the message calls the image (its file name when known).

    Raises:
        OutputTooLargeError: naming the image, the size, the memory and the config key.
    """
    need = 4 * int(num_classes) * int(height) * int(width)
    if max_bytes <= 0 or need <= max_bytes:
        return
    raise OutputTooLargeError(
        f"{name}: its prediction at {height}x{width} (HxW) with {num_classes} classes would take "
        f"{need / 2**20:,.0f} MiB of float32 logits, more than TEST.MAX_OUTPUT_MB "
        f"({max_bytes / 2**20:,.0f} MiB); refused before running the model. Raise "
        "TEST.MAX_OUTPUT_MB (0: no limit) if the memory is there, or downscale the image "
        "(INPUT.MAX_IMAGE_PIXELS limits the images read from files)."
    )


def check_batch_output_sizes(
    batched_inputs: Sequence[dict[str, Any]], *, num_classes: int, max_bytes: int
) -> None:
    """`check_output_size` for each ``{"image", "height"?, "width"?, "file_name"?}`` input."""
    if max_bytes <= 0:
        return
    for x in batched_inputs:
        check_output_size(
            num_classes=num_classes,
            height=int(x.get("height", x["image"].shape[-2])),
            width=int(x.get("width", x["image"].shape[-1])),
            max_bytes=max_bytes,
            name=str(x.get("file_name", "image")),
        )


def pad_to_batch(tensors: Sequence[torch.Tensor], pad_value: float) -> torch.Tensor:
    """Stack tensors of shape (..., H_i, W_i), padding bottom/right to the largest H and W.

    Returns:
        (N, ..., H_max, W_max).
    """
    max_h = max(t.shape[-2] for t in tensors)
    max_w = max(t.shape[-1] for t in tensors)
    if all(t.shape[-2:] == (max_h, max_w) for t in tensors):
        return torch.stack(list(tensors))
    batch = tensors[0].new_full((len(tensors), *tensors[0].shape[:-2], max_h, max_w), pad_value)
    for i, t in enumerate(tensors):
        batch[i, ..., : t.shape[-2], : t.shape[-1]].copy_(t)
    return batch


def sem_seg_postprocess(
    logits: torch.Tensor, image_size: tuple[int, int], height: int, width: int
) -> torch.Tensor:
    """Crop padded logits to the image and resize them to the requested output size.

    Args:
        logits: (C, H_pad, W_pad).
        image_size: (h, w) of the image inside the padded batch.
        height, width: output size (usually the original image size before test-time resizing).

    Returns:
        (C, height, width).
    """
    result = logits[:, : image_size[0], : image_size[1]]
    if result.shape[-2:] == (height, width):
        return result  # bilinear resizing to the same size is the identity
    return F.interpolate(result[None], size=(height, width), mode="bilinear", align_corners=False)[
        0
    ]


class SemanticSegmentor(nn.Module):
    """Backbone + segmentation head + loss, with detectron2's input and output conventions.

    Input: a list of dicts, each with "image" (uint8 (3, H, W) in the model's channel order),
    optionally "height"/"width" (output size at inference) and "sem_seg" (int64 (H, W) labels,
    training). Training returns ``{"loss_sem_seg": scalar}``; inference returns a list of
    ``{"sem_seg": (num_classes, height, width) logits}``.

    Args:
        backbone: module returning ``dict[str, Tensor]``.
        sem_seg_head: module mapping the backbone's features to logits at ``common_stride``.
        loss: module (logits (N, C, H, W), labels (N, H, W)) -> scalar.
        pixel_mean, pixel_std: per-channel normalisation on the 0-255 scale.
        common_stride: stride of the head's logits; they are upsampled by it.
        ignore_value: label value ignored by the loss (also the label padding value).
        loss_weight: factor applied to the loss.
        max_output_bytes: at inference, refuse (before running the backbone) an image whose
            logits at its output ``height`` x ``width`` would take more memory than this
            (`check_output_size`); 0 or negative: no limit.
        logits_at_input_size: resize the head's logits to the input size in one bilinear step
            (torchvision's DeepLabV3) instead of upsampling them by ``common_stride`` and
            cropping (detectron2). Inference then never pads: images of different sizes in
            one batch run one at a time, as torchvision would run them, since padding would
            change the globally pooled ASPP branch.
    """

    def __init__(
        self,
        *,
        backbone: nn.Module,
        sem_seg_head: nn.Module,
        loss: nn.Module,
        pixel_mean: Sequence[float],
        pixel_std: Sequence[float],
        common_stride: int,
        num_classes: int,
        ignore_value: int = 255,
        loss_weight: float = 1.0,
        max_output_bytes: int = 0,
        logits_at_input_size: bool = False,
    ) -> None:
        super().__init__()
        self.logits_at_input_size = bool(logits_at_input_size)
        self.backbone = backbone
        self.sem_seg_head = sem_seg_head
        self.loss = loss
        self.common_stride = common_stride
        self.num_classes = num_classes
        self.ignore_value = ignore_value
        self.loss_weight = loss_weight
        self.max_output_bytes = int(max_output_bytes)
        # Not saved in checkpoints: model-zoo files do not carry them, the config does.
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean).view(-1, 1, 1), False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std).view(-1, 1, 1), False)

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def preprocess(
        self, images: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, list[tuple[int, int]]]:
        """Normalise images and pad them into one batch.

        Args:
            images: N tensors (3, H_i, W_i), uint8 or float on the 0-255 scale.

        Returns:
            (N, 3, H_max, W_max) float batch, padded with 0 after normalisation, and the (H_i, W_i)
            of every image.
        """
        sizes = [(int(x.shape[-2]), int(x.shape[-1])) for x in images]
        normalised = [
            (x.to(device=self.device, non_blocking=True).float() - self.pixel_mean) / self.pixel_std
            for x in images
        ]
        return pad_to_batch(normalised, 0.0), sizes

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits upsampled by the head's stride.

        Args:
            images: (N, 3, H, W) normalised batch.

        Returns:
            (N, num_classes, ceil(H / s) * s, ceil(W / s) * s) for stride s, i.e. (N, C, H, W)
            when H and W are multiples of s; (N, C, H, W) with ``logits_at_input_size``.
        """
        y = self.sem_seg_head(self.backbone(images))
        if self.logits_at_input_size:
            return F.interpolate(y, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return F.interpolate(
            y, scale_factor=self.common_stride, mode="bilinear", align_corners=False
        )

    def forward(self, batched_inputs: list[dict[str, Any]]) -> Any:
        if not self.training:
            check_batch_output_sizes(
                batched_inputs, num_classes=self.num_classes, max_bytes=self.max_output_bytes
            )
        if (
            self.logits_at_input_size
            and not self.training
            and len({tuple(x["image"].shape[-2:]) for x in batched_inputs}) > 1
        ):
            return [self([x])[0] for x in batched_inputs]
        images, sizes = self.preprocess([x["image"] for x in batched_inputs])
        logits = self.logits(images)
        if self.training:
            if "sem_seg" not in batched_inputs[0]:
                raise ValueError("Training inputs need a 'sem_seg' label map per image.")
            # Labels may come as uint8 (`compact_label_dtype`): moved narrow, widened here.
            targets = pad_to_batch(
                [x["sem_seg"].to(self.device, non_blocking=True).long() for x in batched_inputs],
                self.ignore_value,
            )
            # Sizes that are not multiples of the stride give slightly larger logits; cropping
            # them is what inference does too.
            logits = logits[..., : targets.shape[-2], : targets.shape[-1]]
            return {"loss_sem_seg": self.loss(logits, targets) * self.loss_weight}
        results = []
        for result, inputs, size in zip(logits, batched_inputs, sizes):
            height = int(inputs.get("height", size[0]))
            width = int(inputs.get("width", size[1]))
            results.append({"sem_seg": sem_seg_postprocess(result, size, height, width)})
        return results
