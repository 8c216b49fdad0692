"""Mask R-CNN (torchvision) tuned for fields at 10 m, behind the :class:`FieldModel` interface.

torchvision's defaults are made for COCO photographs: chips resized to 800 px, anchors of 32 to
512 px, at most 100 detections. Here every such setting is explicit and sized for fields of 3 to
200 pixels across in chips of a few hundred pixels, with hundreds of fields per chip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field
from torchvision.models import get_weight
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import (
    BackboneWithFPN,
    mobilenet_backbone,
    resnet_fpn_backbone,
)
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.ops import MultiScaleRoIAlign

from fieldseg.band_statistics import BandStatistics
from fieldseg.errors import ConfigError
from fieldseg.models.base import ChipPrediction, FieldModel, Pretrained, touches_edge
from fieldseg.models.ignore_sampling import make_ignore_aware
from fieldseg.models.input_layer import adapt_first_conv, download_weights
from fieldseg.models.mask_pasting import BoxedMaskTransform

#: Backbones and the torchvision names of their ImageNet weights.
BACKBONE_WEIGHTS: dict[str, str] = {
    "resnet18": "ResNet18_Weights.IMAGENET1K_V1",
    "resnet34": "ResNet34_Weights.IMAGENET1K_V1",
    "resnet50": "ResNet50_Weights.IMAGENET1K_V1",
    "mobilenet_v3_large": "MobileNet_V3_Large_Weights.IMAGENET1K_V1",
}
#: MobileNetV3's stages returned to the FPN: strides 4 to 32, as for the ResNets (torchvision's
#: default starts at stride 32, far too coarse for fields a few pixels across).
MOBILENET_RETURNED_STAGES = [1, 2, 3, 4]


class MaskRCNNConfig(BaseModel):
    """The ``model:`` section of a Mask R-CNN run config; an unknown key is an error."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    family: Literal["maskrcnn"] = "maskrcnn"
    backbone: Literal["resnet18", "resnet34", "resnet50", "mobilenet_v3_large"] = "resnet50"
    trainable_layers: int = Field(5, ge=0, le=5, description="backbone stages trained (5: all)")
    upsample: float = Field(1.0, ge=1, le=4, description="chip scale factor for small fields")
    anchor_sizes: list[list[float]] = Field(
        default=[[3, 5, 8], [8, 12, 16], [16, 24, 32], [32, 48, 64], [64, 128, 200]],
        description="anchor sides in chip pixels, per FPN level (strides 4 to 64)",
    )
    aspect_ratios: list[float] = Field(default=[0.33, 1.0, 3.0])
    detections_per_chip: int = Field(300, ge=1)
    rpn_pre_nms_top_n_train: int = 4000
    rpn_post_nms_top_n_train: int = 2000
    rpn_pre_nms_top_n_test: int = 2000
    rpn_post_nms_top_n_test: int = 1000
    rpn_batch_size_per_image: int = 512
    box_batch_size_per_image: int = 1024
    box_score_thresh: float = Field(0.05, ge=0, le=1)
    box_nms_thresh: float = Field(0.5, ge=0, le=1)
    mask_resolution: Literal[28, 56] = Field(28, description="mask head output side")
    ignore_share: float = Field(
        0.5, gt=0, le=1, description="a would-be negative this much in ignore is not sampled"
    )


def _fpn_backbone(config: MaskRCNNConfig, weights: Any) -> BackboneWithFPN:
    """The backbone with an FPN of five levels at strides 4 to 64."""
    if config.backbone.startswith("mobilenet"):
        # MobileNetV3 has six stages (stem included): "all five" trainable means all six
        trainable = 6 if config.trainable_layers == 5 else config.trainable_layers
        return mobilenet_backbone(
            backbone_name=config.backbone,
            weights=weights,
            fpn=True,
            trainable_layers=trainable,
            returned_layers=MOBILENET_RETURNED_STAGES,
        )
    return resnet_fpn_backbone(
        backbone_name=config.backbone, weights=weights, trainable_layers=config.trainable_layers
    )


class MaskRCNNFieldModel(FieldModel):
    """torchvision Mask R-CNN with an FPN ResNet or MobileNetV3 backbone, for any band count.

    Args:
        config: the model settings.
        band_names: the dataset's bands, in order.
        statistics: their normalisation statistics.
        nodata: the dataset's nodata value.
        chip_size: chip side in pixels (chips are never resized, except by ``upsample``).
        num_classes: field categories (background excluded).
        pretrained: ``imagenet`` (backbone), ``coco`` (whole detector, ResNet-50 only) or
            ``none``; the weights API downloads them when not cached.
    """

    family = "maskrcnn"

    def __init__(
        self,
        config: MaskRCNNConfig,
        band_names: Sequence[str],
        statistics: Sequence[BandStatistics],
        nodata: float | None,
        *,
        chip_size: int,
        num_classes: int,
        pretrained: Pretrained = "none",
    ) -> None:
        super().__init__(band_names, statistics, nodata)
        if len({len(level) for level in config.anchor_sizes}) != 1:
            raise ConfigError("model.anchor_sizes needs as many sizes on every FPN level")
        if len(config.anchor_sizes) != 5:
            raise ConfigError("model.anchor_sizes needs one list per FPN level (5 levels)")
        if pretrained == "coco" and config.backbone != "resnet50":
            raise ConfigError("COCO weights exist for the resnet50 backbone only")
        self.config = config
        weights = (
            get_weight(BACKBONE_WEIGHTS[config.backbone]) if pretrained == "imagenet" else None
        )
        backbone = download_weights(
            f"ImageNet {config.backbone}", lambda: _fpn_backbone(config, weights)
        )
        size = round(chip_size * config.upsample)
        anchors = AnchorGenerator(
            sizes=tuple(tuple(s * config.upsample for s in level) for level in config.anchor_sizes),
            aspect_ratios=(tuple(config.aspect_ratios),) * len(config.anchor_sizes),
        )
        mask_pool = MultiScaleRoIAlign(
            featmap_names=["0", "1", "2", "3"],
            output_size=config.mask_resolution // 2,
            sampling_ratio=2,
        )
        self.detector = MaskRCNN(
            backbone,
            num_classes=None,  # given by the two predictors below
            min_size=size,
            max_size=size,
            image_mean=[0.0] * len(band_names),  # pixels arrive normalised (BandNormaliser)
            image_std=[1.0] * len(band_names),
            rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=config.rpn_pre_nms_top_n_train,
            rpn_post_nms_top_n_train=config.rpn_post_nms_top_n_train,
            rpn_pre_nms_top_n_test=config.rpn_pre_nms_top_n_test,
            rpn_post_nms_top_n_test=config.rpn_post_nms_top_n_test,
            rpn_batch_size_per_image=config.rpn_batch_size_per_image,
            box_batch_size_per_image=config.box_batch_size_per_image,
            box_score_thresh=config.box_score_thresh,
            box_nms_thresh=config.box_nms_thresh,
            box_detections_per_img=config.detections_per_chip,
            box_predictor=FastRCNNPredictor(1024, num_classes + 1),  # after the 1024-wide head
            mask_roi_pool=mask_pool,
            mask_head=MaskRCNNHeads(backbone.out_channels, (256, 256, 256, 256), 1),
            mask_predictor=MaskRCNNPredictor(256, 256, num_classes + 1),
        )
        # masks pasted into their boxes only: the stitcher reads crops, not N x H x W stacks
        self.detector.transform = BoxedMaskTransform.like(self.detector.transform)
        if pretrained == "coco":
            self._load_coco_weights()
        adapt_first_conv(self.detector.backbone, band_names)
        make_ignore_aware(self.detector, config.ignore_share)

    def _load_coco_weights(self) -> None:
        """COCO detector weights, except the class-specific heads (other classes here)."""
        weights = get_weight("MaskRCNN_ResNet50_FPN_Weights.COCO_V1")
        state = download_weights("COCO Mask R-CNN", lambda: weights.get_state_dict(progress=True))
        own = self.detector.state_dict()
        fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
        self.detector.load_state_dict(fitting, strict=False)

    def set_score_threshold(self, score: float) -> None:
        """Masks are only computed for boxes scoring at least ``score`` (and box_score_thresh)."""
        self.detector.roi_heads.score_thresh = max(self.config.box_score_thresh, score)

    def _size_transform(self, images: Sequence[torch.Tensor]) -> None:
        """Keep chips at their own size (times ``upsample``), whatever size they come in.

        torchvision resizes every image to ``min_size``; fixed at the training chip size, that
        would shrink larger chips at prediction time and blur their small fields.
        """
        side = max(max(image.shape[-2:]) for image in images) if images else 0
        if side:
            size = round(side * self.config.upsample)
            self.detector.transform.min_size = (size,)
            self.detector.transform.max_size = size

    def training_step(
        self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """Mask R-CNN's five losses (objectness, RPN box, classifier, box, mask).

        Anchors and proposals lying mostly in a chip's ignore mask are not used as negatives
        (see :mod:`fieldseg.models.ignore_sampling`).
        """
        self.detector.train()
        self._size_transform(images)
        keys = ("boxes", "labels", "masks", "ignore")
        detector_targets = [{k: t[k] for k in keys if t.get(k) is not None} for t in targets]
        return self.detector(self.normalise(images), detector_targets)

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[ChipPrediction]:
        """Instances of each raw chip, with soft masks at chip resolution, each in its box."""
        self.detector.eval()
        self._size_transform(images)
        outputs = self.detector(self.normalise(images))
        predictions = []
        for output in outputs:
            masks = output["masks"]  # BoxedMasks (BoxedMaskTransform)
            predictions.append(
                ChipPrediction(
                    masks=masks,
                    scores=output["scores"],
                    labels=output["labels"],
                    touches_edge=touches_edge(masks),
                )
            )
        return predictions
