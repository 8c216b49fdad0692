"""YOLACT and YOLACT++ (Bolya et al. 2019, 2020), one-stage instance segmentation for fields.

A ResNet + FPN backbone feeds two branches that run in parallel: a protonet turning the finest
pyramid level into ``k`` prototype masks for the whole chip, and a head predicting, for every
anchor of every level, class scores, a box and ``k`` mask coefficients. Detections pass Fast
NMS; each kept detection's mask is its coefficients times the prototypes, through a sigmoid,
cropped to its box. Written from the papers on torch and torchvision ops.

Sized for fields at 10 m: pyramid levels at strides 4 to 64 (the paper starts at 8, too coarse
for fields of 5 to 10 pixels), anchors from 6 pixels up, prototypes at stride 2 by default
(``prototype_stride``; the paper's stride 4 blurs the edges of small fields), hundreds of
detections per chip. YOLACT++ adds mask re-scoring (a small network predicting each mask's IoU
with its field, which then ranks the masks) and deformable convolutions in the later backbone
stages (``deformable_stages``). ``suppress_claimed`` keeps masks of touching fields from
leaking into each other (:func:`fieldseg.models.prototype_masks.suppress_claimed`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torchvision.models import get_weight, resnet
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from fieldseg.band_statistics import BandStatistics
from fieldseg.errors import ConfigError
from fieldseg.models.base import ChipPrediction, FieldModel, Pretrained, touches_edge
from fieldseg.models.deformable import make_deformable
from fieldseg.models.fast_nms import fast_nms
from fieldseg.models.input_layer import adapt_first_conv, download_weights
from fieldseg.models.maskrcnn import BACKBONE_WEIGHTS
from fieldseg.models.prototype_masks import (
    assemble_masks,
    box_crop_mask,
    crop_to_boxes,
    suppress_claimed,
)
from fieldseg.models.yolact_losses import (
    box_loss,
    classification_loss,
    mask_iou,
    mask_iou_loss,
    mask_loss,
    semantic_loss,
)
from fieldseg.models.yolact_targets import decode_boxes, make_anchors, match_anchors

#: Strides of the pyramid levels: the ResNet's stages 2 to 5 and one pooled level below.
LEVEL_STRIDES = (4, 8, 16, 32, 64)
#: Chips are padded to a multiple of this, so every level's cells line up with the chip.
SIZE_MULTIPLE = 64
_STAGE_CHANNELS = {"resnet18": 64, "resnet34": 64, "resnet50": 256, "resnet101": 256}


class YolactConfig(BaseModel):
    """The ``model:`` section of a YOLACT / YOLACT++ run config; an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    family: Literal["yolact"] = "yolact"
    backbone: Literal["resnet18", "resnet34", "resnet50", "resnet101"] = "resnet50"
    batchnorm: Literal["auto", "frozen", "train"] = Field(
        "auto", description="backbone batch norm; auto: frozen with ImageNet weights, else train"
    )
    fpn_channels: int = Field(256, ge=8)
    # On the synthetic benchmark data (median field 8 x 15 px), three ratios and anchors of 4 to
    # 128 px left 46 % of the fields without an anchor at IoU 0.5 (1.6 positives per field);
    # these defaults leave 21 % (3.3 positives per field).
    anchor_sizes: list[list[float]] = Field(
        default=[[6, 10], [14, 20], [28, 40], [56, 80], [112, 160]],
        description="anchor sides in chip pixels, per pyramid level (strides 4 to 64)",
    )
    aspect_ratios: list[float] = Field(
        default=[1 / 3, 0.5, 1.0, 2.0, 3.0], description="width / height"
    )
    num_prototypes: int = Field(32, ge=1, description="k, the prototype masks")
    prototype_stride: Literal[1, 2, 4] = Field(2, description="chip pixels per prototype pixel")
    prototype_channels: int = Field(256, ge=8, description="width of the protonet's convs")
    head_channels: int = Field(256, ge=8, description="width of the prediction head")
    positive_iou: float = Field(0.5, gt=0, le=1)
    negative_iou: float = Field(0.4, gt=0, le=1)
    negatives_per_positive: float = Field(3.0, gt=0, description="hard negative mining")
    masks_per_chip: int = Field(100, ge=1, description="positives whose masks are trained")
    class_weight: float = Field(1.0, ge=0)
    box_weight: float = Field(1.5, ge=0)
    mask_weight: float = Field(6.125, ge=0)
    semantic_weight: float = Field(1.0, ge=0)
    mask_iou_weight: float = Field(1.0, ge=0)
    score_threshold: float = Field(0.05, ge=0, le=1, description="detections kept for NMS")
    candidates_per_class: int = Field(1000, ge=1, description="top-k per class before NMS")
    nms_iou: float = Field(0.5, gt=0, le=1)
    detections_per_chip: int = Field(300, ge=1)
    mask_rescoring: bool = Field(False, description="YOLACT++: rank masks by predicted IoU")
    deformable_stages: list[int] = Field(
        default=[], description="YOLACT++: ResNet stages (3-5) with deformable 3x3 convs"
    )
    deformable_interval: int = Field(3, ge=1, description="every n-th block of those stages")
    suppress_claimed: bool = Field(
        True, description="drop mask pixels a higher-ranked instance claims confidently"
    )
    claim_threshold: float = Field(0.7, gt=0, lt=1)
    ignore_share: float = Field(
        0.5, gt=0, le=1, description="an anchor this much in ignore is never background"
    )


class _Backbone(nn.Module):
    """ResNet stages 2-5 with an FPN: five levels of ``fpn_channels`` at strides 4 to 64."""

    def __init__(self, config: YolactConfig, weights: Any) -> None:
        super().__init__()
        frozen = config.batchnorm == "frozen" or (config.batchnorm == "auto" and weights)
        norm = FrozenBatchNorm2d if frozen else nn.BatchNorm2d
        body = getattr(resnet, config.backbone)(weights=weights, norm_layer=norm)
        if config.deformable_stages:
            make_deformable(body, config.deformable_stages, config.deformable_interval)
        self.stem = nn.Sequential(body.conv1, body.bn1, body.relu, body.maxpool)
        self.stages = nn.ModuleList([body.layer1, body.layer2, body.layer3, body.layer4])
        first = _STAGE_CHANNELS[config.backbone]
        widths = [first, first * 2, first * 4, first * 8]
        self.lateral = nn.ModuleList(nn.Conv2d(w, config.fpn_channels, 1) for w in widths)
        self.smooth = nn.ModuleList(
            nn.Conv2d(config.fpn_channels, config.fpn_channels, 3, padding=1) for _ in widths
        )
        self.extra = LastLevelMaxPool()

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Pyramid levels, finest first."""
        x = self.stem(x)
        stage_outputs = []
        for stage in self.stages:
            x = stage(x)
            stage_outputs.append(x)
        merged = self.lateral[-1](stage_outputs[-1])
        levels = [self.smooth[-1](merged)]
        for i in range(len(stage_outputs) - 2, -1, -1):
            lateral = self.lateral[i](stage_outputs[i])
            merged = lateral + F.interpolate(merged, size=lateral.shape[-2:], mode="nearest")
            levels.insert(0, self.smooth[i](merged))
        levels, _ = self.extra(levels, stage_outputs, [str(i) for i in range(len(levels))])
        return levels


class _Protonet(nn.Module):
    """Finest pyramid level -> ``k`` prototype masks at ``4 / upscale`` chip pixels each."""

    def __init__(self, in_channels: int, width: int, prototypes: int, upscale: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(3):
            layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(inplace=True)]
            channels = width
        self.body = nn.Sequential(*layers)
        self.upscale = upscale
        self.tail = nn.Sequential(
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, prototypes, 1),
            nn.ReLU(inplace=True),  # the paper's unbounded, non-negative prototypes
        )

    def forward(self, finest: torch.Tensor) -> torch.Tensor:
        x = self.body(finest)
        if self.upscale > 1:
            x = F.interpolate(x, scale_factor=self.upscale, mode="bilinear", align_corners=False)
        return self.tail(x)


class _PredictionHead(nn.Module):
    """Per anchor: class logits (background first), a box and ``k`` coefficients in [-1, 1]."""

    def __init__(
        self, in_channels: int, width: int, anchors_per_cell: int, classes: int, prototypes: int
    ) -> None:
        super().__init__()
        self.shared = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU())
        self.classes = nn.Conv2d(width, anchors_per_cell * (classes + 1), 3, padding=1)
        self.boxes = nn.Conv2d(width, anchors_per_cell * 4, 3, padding=1)
        self.coefficients = nn.Conv2d(width, anchors_per_cell * prototypes, 3, padding=1)
        self.n_classes = classes + 1
        self.n_prototypes = prototypes
        with torch.no_grad():
            # start with every anchor at ~1 % field, as a prior: otherwise the first steps
            # are spent unlearning a 50 % guess on tens of thousands of background anchors
            bias = self.classes.bias.view(anchors_per_cell, classes + 1)
            bias.zero_()
            bias[:, 0] = 4.6

    def forward(self, level: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.shared(level)
        batch = x.shape[0]

        def flat(t: torch.Tensor, size: int) -> torch.Tensor:
            return t.permute(0, 2, 3, 1).reshape(batch, -1, size)

        return (
            flat(self.classes(x), self.n_classes),
            flat(self.boxes(x), 4),
            torch.tanh(flat(self.coefficients(x), self.n_prototypes)),
        )


class _MaskIoUHead(nn.Module):
    """YOLACT++'s re-scoring network: a cropped mask in, its IoU with the field per class out."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        widths = [1, 8, 16, 32, 64, 128]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(widths[-1], classes, 1)]
        self.body = nn.Sequential(*layers)

    def forward(self, masks: torch.Tensor) -> torch.Tensor:
        """(N, h, w) mask probabilities -> (N, classes) predicted IoU."""
        return self.body(masks.unsqueeze(1)).amax(dim=(2, 3))


class YolactFieldModel(FieldModel):
    """YOLACT / YOLACT++ with a ResNet + FPN backbone, for any band count.

    Args:
        config: the model settings.
        band_names: the dataset's bands, in order.
        statistics: their normalisation statistics.
        nodata: the dataset's nodata value.
        chip_size: chip side in pixels (unused: any chip size works).
        num_classes: field categories (background excluded).
        pretrained: ``imagenet`` (backbone) or ``none``; there are no COCO YOLACT weights in
            torchvision.
    """

    family = "yolact"

    def __init__(
        self,
        config: YolactConfig,
        band_names: Sequence[str],
        statistics: Sequence[BandStatistics],
        nodata: float | None,
        *,
        chip_size: int,
        num_classes: int,
        pretrained: Pretrained = "none",
    ) -> None:
        super().__init__(band_names, statistics, nodata)
        if pretrained == "coco":
            raise ConfigError(
                "there are no COCO weights for YOLACT in torchvision: use --pretrained imagenet "
                "(backbone) or --weights PATH"
            )
        if len(config.anchor_sizes) != len(LEVEL_STRIDES):
            raise ConfigError(f"model.anchor_sizes needs {len(LEVEL_STRIDES)} lists, one per level")
        if len({len(level) for level in config.anchor_sizes}) != 1:
            raise ConfigError("model.anchor_sizes needs as many sizes on every pyramid level")
        if any(stage not in (2, 3, 4, 5) for stage in config.deformable_stages):
            raise ConfigError("model.deformable_stages are ResNet stages 2 to 5")
        if config.negative_iou > config.positive_iou:
            raise ConfigError("model.negative_iou cannot exceed model.positive_iou")
        self.config = config
        self.num_classes = num_classes
        weights = None
        if pretrained == "imagenet":
            weights = get_weight(BACKBONE_WEIGHTS[config.backbone])
        self.backbone = download_weights(
            f"ImageNet {config.backbone}", lambda: _Backbone(config, weights)
        )
        adapt_first_conv(self.backbone, band_names)
        anchors_per_cell = len(config.anchor_sizes[0]) * len(config.aspect_ratios)
        self.protonet = _Protonet(
            config.fpn_channels,
            config.prototype_channels,
            config.num_prototypes,
            upscale=LEVEL_STRIDES[0] // config.prototype_stride,
        )
        self.head = _PredictionHead(
            config.fpn_channels,
            config.head_channels,
            anchors_per_cell,
            num_classes,
            config.num_prototypes,
        )
        self.semantic = nn.Conv2d(config.fpn_channels, num_classes, 1)
        self.mask_iou = _MaskIoUHead(num_classes) if config.mask_rescoring else None
        self._score_threshold = config.score_threshold
        self._anchor_cache: dict[tuple[Any, ...], torch.Tensor] = {}

    # -- shared forward ------------------------------------------------------------------

    def _forward(self, images: Sequence[torch.Tensor]) -> dict[str, Any]:
        """Normalise, pad and run the network; every output of the batch."""
        normalised = self.normalise(images)
        height = max(image.shape[-2] for image in normalised)
        width = max(image.shape[-1] for image in normalised)
        padded_h = -(-height // SIZE_MULTIPLE) * SIZE_MULTIPLE
        padded_w = -(-width // SIZE_MULTIPLE) * SIZE_MULTIPLE
        batch = torch.stack(
            [
                F.pad(image, (0, padded_w - image.shape[-1], 0, padded_h - image.shape[-2]))
                for image in normalised
            ]
        )
        levels = self.backbone(batch)
        outputs = [self.head(level) for level in levels]
        return {
            "levels": levels,
            "classes": torch.cat([o[0] for o in outputs], dim=1),
            "boxes": torch.cat([o[1] for o in outputs], dim=1),
            "coefficients": torch.cat([o[2] for o in outputs], dim=1),
            "prototypes": self.protonet(levels[0]),
            "anchors": self._anchors(levels, batch.device),
            "size": (padded_h, padded_w),
        }

    def _anchors(self, levels: Sequence[torch.Tensor], device: torch.device) -> torch.Tensor:
        sizes = tuple(tuple(level.shape[-2:]) for level in levels)
        key = (sizes, str(device))
        if key not in self._anchor_cache:
            self._anchor_cache[key] = make_anchors(
                sizes, LEVEL_STRIDES, self.config.anchor_sizes, self.config.aspect_ratios, device
            )
        return self._anchor_cache[key]

    # -- training ------------------------------------------------------------------------

    def training_step(
        self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """YOLACT's losses: class, box, mask, semantic (and mask IoU for YOLACT++)."""
        self.train()
        c = self.config
        out = self._forward(images)
        anchors = out["anchors"]
        padded_h, padded_w = out["size"]
        prototypes = out["prototypes"]
        proto_h, proto_w = prototypes.shape[-2:]
        matches = []
        for target in targets:
            ignore = target.get("ignore")
            if ignore is not None:
                ignore = _pad_to(ignore.bool(), padded_h, padded_w)
            matches.append(
                match_anchors(
                    anchors,
                    target["boxes"].float(),
                    target["labels"],
                    positive_iou=c.positive_iou,
                    negative_iou=c.negative_iou,
                    ignore=ignore,
                    ignore_share=c.ignore_share,
                )
            )
        labels = torch.stack([m.labels for m in matches])
        box_targets = torch.stack([m.box_targets for m in matches])
        losses = {
            "loss_class": c.class_weight
            * classification_loss(out["classes"], labels, c.negatives_per_positive),
            "loss_box": c.box_weight * box_loss(out["boxes"], box_targets, labels),
        }
        mask_sum = prototypes.new_zeros(())
        iou_sum = prototypes.new_zeros(())
        trained = 0
        semantic_truth = []
        semantic_weight = []
        level_h, level_w = out["levels"][0].shape[-2:]
        for i, (target, match) in enumerate(zip(targets, matches, strict=True)):
            masks = _pad_to(target["masks"].float(), padded_h, padded_w)
            semantic_truth.append(self._class_extent(masks, target["labels"], level_h, level_w))
            ignore = target.get("ignore")
            weight = torch.ones(level_h, level_w, device=masks.device)
            if ignore is not None:
                small = _downsample(_pad_to(ignore.float(), padded_h, padded_w), level_h, level_w)
                weight = 1 - small
            semantic_weight.append(weight)
            positive = match.positive.nonzero().squeeze(1)
            if positive.numel() == 0:
                continue
            if positive.numel() > c.masks_per_chip:
                positive = positive[torch.randperm(positive.numel(), device=positive.device)]
                positive = positive[: c.masks_per_chip]
            instance = match.matched[positive]
            truth = _downsample(masks, proto_h, proto_w)[instance]
            inside = box_crop_mask(
                target["boxes"].float()[instance], proto_h, proto_w, 1 / c.prototype_stride
            )
            logits = assemble_masks(prototypes[i], out["coefficients"][i, positive])
            mask_sum = mask_sum + mask_loss(logits, truth, inside)
            trained += positive.numel()
            if self.mask_iou is not None:
                probabilities = (torch.sigmoid(logits) * inside).detach()
                predicted = self.mask_iou(probabilities)
                predicted = predicted.gather(1, (target["labels"][instance] - 1).unsqueeze(1))
                iou_sum = iou_sum + mask_iou_loss(
                    predicted.squeeze(1), mask_iou(probabilities, truth)
                )
        if trained == 0:  # keep every parameter in the graph, as DistributedDataParallel needs
            mask_sum = mask_sum + 0.0 * (prototypes.sum() + out["coefficients"].sum())
            if self.mask_iou is not None:
                iou_sum = iou_sum + 0.0 * sum(p.sum() for p in self.mask_iou.parameters())
        losses["loss_mask"] = c.mask_weight * mask_sum / max(trained, 1)
        losses["loss_semantic"] = c.semantic_weight * semantic_loss(
            self.semantic(out["levels"][0]),
            torch.stack(semantic_truth),
            torch.stack(semantic_weight),
        )
        if self.mask_iou is not None:
            losses["loss_mask_iou"] = c.mask_iou_weight * iou_sum / max(trained, 1)
        return losses

    def _class_extent(
        self, masks: torch.Tensor, labels: torch.Tensor, height: int, width: int
    ) -> torch.Tensor:
        """(classes, height, width) share of each cell covered by fields of each class."""
        extent = masks.new_zeros(self.num_classes, *masks.shape[-2:])
        for cls in range(self.num_classes):
            chosen = masks[labels == cls + 1]
            if chosen.shape[0]:
                extent[cls] = chosen.amax(dim=0)
        return _downsample(extent, height, width)

    # -- prediction ----------------------------------------------------------------------

    def set_score_threshold(self, score: float) -> None:
        """Masks are only assembled for detections scoring at least ``score``."""
        self._score_threshold = max(self.config.score_threshold, score)

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[ChipPrediction]:
        """Instances of each raw chip: Fast NMS, masks assembled, cropped and ranked."""
        self.eval()
        out = self._forward(images)
        anchors = out["anchors"]
        probabilities = F.softmax(out["classes"], dim=-1)[..., 1:]
        return [
            self._chip_prediction(
                image.shape[-2:],
                anchors,
                probabilities[i],
                out["boxes"][i],
                out["coefficients"][i],
                out["prototypes"][i],
                out["size"],
            )
            for i, image in enumerate(images)
        ]

    def _chip_prediction(
        self,
        shape: torch.Size,
        anchors: torch.Tensor,
        probabilities: torch.Tensor,
        deltas: torch.Tensor,
        coefficients: torch.Tensor,
        prototypes: torch.Tensor,
        padded: tuple[int, int],
    ) -> ChipPrediction:
        c = self.config
        height, width = int(shape[0]), int(shape[1])
        anchor_index, cls = (probabilities > self._score_threshold).nonzero(as_tuple=True)
        scores = probabilities[anchor_index, cls]
        boxes = decode_boxes(deltas[anchor_index], anchors[anchor_index])
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
        labels = cls + 1
        keep = fast_nms(boxes, scores, labels, c.nms_iou, max_candidates=c.candidates_per_class)
        keep = keep[: c.detections_per_chip]
        anchor_index, boxes, scores, labels = (
            anchor_index[keep],
            boxes[keep],
            scores[keep],
            labels[keep],
        )
        logits = assemble_masks(prototypes, coefficients[anchor_index])
        if self.mask_iou is not None and logits.shape[0]:
            proto_h, proto_w = logits.shape[-2:]
            cropped = torch.sigmoid(logits) * box_crop_mask(
                boxes, proto_h, proto_w, 1 / c.prototype_stride
            )
            predicted = self.mask_iou(cropped).gather(1, (labels - 1).unsqueeze(1)).squeeze(1)
            scores = scores * predicted.clamp(0, 1)
            order = scores.argsort(descending=True)
            logits, boxes, scores, labels = (t[order] for t in (logits, boxes, scores, labels))
        masks = torch.sigmoid(
            F.interpolate(logits.unsqueeze(1), size=padded, mode="bilinear", align_corners=False)
        )[:, 0, :height, :width]
        masks = crop_to_boxes(masks, boxes)
        if c.suppress_claimed:
            masks = suppress_claimed(masks, c.claim_threshold)
        found = masks.flatten(1).amax(dim=1) > 0.5 if masks.shape[0] else scores > 0
        masks, scores, labels = masks[found], scores[found], labels[found]
        return ChipPrediction(
            masks=masks, scores=scores, labels=labels, touches_edge=touches_edge(masks)
        )


def _pad_to(array: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Zero-pad the last two dimensions to ``height`` x ``width``."""
    return F.pad(array, (0, width - array.shape[-1], 0, height - array.shape[-2]))


def _downsample(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Area-average (..., H, W) masks to (..., height, width): soft shares, kept for tiny fields."""
    if masks.shape[-2:] == (height, width):
        return masks
    lead = masks.shape[:-2]
    flat = masks.reshape(lead.numel(), 1, *masks.shape[-2:])
    return F.adaptive_avg_pool2d(flat, (height, width)).reshape(*lead, height, width)
