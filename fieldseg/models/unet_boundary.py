"""Boundary-aware U-Net (segmentation-models-pytorch) with watershed instance extraction.

A semantic U-Net predicts, per pixel, background, field interior and field boundary (each
field's own inner edge, :mod:`fieldseg.boundary_targets`), softmaxed. Fields come out of those
maps by marker-controlled watershed (:mod:`fieldseg.instance_extraction`): markers on confident
interiors, flooding up the boundary map within the field extent, so fields that touch stay
apart. Its thresholds are tuned on the val split as training goes and travel in the checkpoint.

The loss is cross-entropy with the boundary class weighted up (``boundary_weight``) plus a
region loss, Dice or Tversky, over the interior and boundary classes; ignored and invalid
pixels take part in neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from fieldseg.band_statistics import BandStatistics
from fieldseg.boundary_targets import (
    BOUNDARY,
    IGNORE_INDEX,
    INTERIOR,
    boundary_target,
    instance_labels,
)
from fieldseg.errors import ConfigError
from fieldseg.instance_extraction import (
    ExtractedFields,
    ExtractionParams,
    extract_fields,
    tune_params,
)
from fieldseg.models.base import ChipPrediction, FieldModel, Pretrained, touches_edge
from fieldseg.models.boxed_masks import BoxedMasks
from fieldseg.models.input_layer import adapt_first_conv, download_weights

if TYPE_CHECKING:
    from fieldseg.chip_dataset import ChipDataset

#: smp encoders offered (any smp encoder name works; these are tested).
ENCODERS = ("resnet18", "resnet34", "resnet50", "efficientnet-b0", "efficientnet-b3")
#: Extraction settings tried after every epoch, two grids: markers from interior components
#: (18 extractions) and from depth peaks (2, each about three times dearer), every one at four
#: score floors (cheap: fields are only dropped), so calibration stays a small part of an epoch
#: on a CPU. On benchmarks/models.py's U-Net after 8 minutes, retuning over these grids instead
#: of extent x marker thresholds alone (with seeds, and predict's old 0.5 score floor) raised val
#: object F1 from 0.62 to 0.64 and scene F1 from 0.577 to 0.591, same weights.
CALIBRATION_GRIDS = (
    {
        "marker_depth": (0.0,),
        "extent_threshold": (0.4, 0.5, 0.6),
        "marker_threshold": (0.5, 0.6, 0.7),
        "unclaimed_seeds": (False, True),
        "min_score": (0.0, 0.2, 0.35, 0.5),
    },
    {
        "marker_depth": (1.0,),
        "extent_threshold": (0.5, 0.6),
        "marker_threshold": (0.5,),
        "unclaimed_seeds": (False,),
        "min_score": (0.0, 0.2, 0.35, 0.5),
    },
)


class UNetBoundaryConfig(BaseModel):
    """The ``model:`` section of a boundary-aware U-Net run config."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    family: Literal["unet_boundary"] = "unet_boundary"
    encoder: str = Field("resnet34", description="segmentation-models-pytorch encoder name")
    encoder_depth: int = Field(5, ge=3, le=5)
    decoder_channels: list[int] = Field(default=[256, 128, 64, 32, 16])
    boundary_width: int = Field(1, ge=1, le=3, description="boundary band depth in pixels")
    boundary_weight: float = Field(3.0, gt=0, description="cross-entropy weight of boundary")
    region_loss: Literal["dice", "tversky", "none"] = "dice"
    region_weight: float = Field(1.0, ge=0)
    tversky_alpha: float = Field(0.3, ge=0, le=1, description="weight of false positives")
    tversky_beta: float = Field(0.7, ge=0, le=1, description="weight of false negatives")
    extent_threshold: float = Field(0.5, gt=0, lt=1, description="start value; tuned on val")
    marker_threshold: float = Field(0.6, gt=-1, lt=1, description="start value; tuned on val")
    min_field_pixels: int = Field(4, ge=1)
    marker_depth: float = Field(0.0, ge=0, description="start value; tuned on val")
    unclaimed_seeds: bool = Field(True, description="start value; tuned on val")
    min_score: float = Field(0.0, ge=0, le=1, description="start value; tuned on val")
    tune_on_val: bool = Field(True, description="tune the extraction settings on val")


class UNetBoundaryFieldModel(FieldModel):
    """smp U-Net predicting background / interior / boundary, fields by watershed.

    Args:
        config: the model settings.
        band_names: the dataset's bands, in order (any count; multi-date stacks included).
        statistics: their normalisation statistics.
        nodata: the dataset's nodata value.
        chip_size: training chip side (chips of any size are predicted; padded internally).
        num_classes: field categories; this family predicts one (``field``).
        pretrained: ``imagenet`` encoder weights through smp (downloaded when not cached), or
            ``none``.
    """

    family = "unet_boundary"
    dense_output = True
    #: The fields predict writes come from the calibrated extraction, so best.pt is the epoch
    #: whose calibrated extraction scores best on val, not the one with the best mask mAP.
    selection_metric = "object_f1"

    def __init__(
        self,
        config: UNetBoundaryConfig,
        band_names: Sequence[str],
        statistics: Sequence[BandStatistics],
        nodata: float | None,
        *,
        chip_size: int,
        num_classes: int,
        pretrained: Pretrained = "none",
    ) -> None:
        super().__init__(band_names, statistics, nodata)
        if num_classes != 1:
            raise ConfigError(
                f"the unet_boundary family predicts one category (field); the dataset has "
                f"{num_classes} (tile without --class-column, or use maskrcnn)"
            )
        if pretrained == "coco":
            raise ConfigError("no COCO weights exist for the U-Net; use imagenet or none")
        if len(config.decoder_channels) != config.encoder_depth:
            raise ConfigError("model.decoder_channels needs one entry per encoder_depth level")
        import segmentation_models_pytorch as smp

        self.config = config
        try:
            self.net = download_weights(
                f"ImageNet {config.encoder}",
                lambda: smp.Unet(
                    encoder_name=config.encoder,
                    encoder_depth=config.encoder_depth,
                    encoder_weights="imagenet" if pretrained == "imagenet" else None,
                    decoder_channels=config.decoder_channels,
                    in_channels=3,  # adapted below by band name, as for every family
                    classes=3,
                ),
            )
        except (KeyError, ValueError) as exc:
            raise ConfigError(f"model.encoder {config.encoder!r}: {exc}") from exc
        adapt_first_conv(self.net.encoder, band_names)
        params = ExtractionParams(
            extent_threshold=config.extent_threshold,
            marker_threshold=config.marker_threshold,
            min_field_pixels=config.min_field_pixels,
            marker_depth=config.marker_depth,
            unclaimed_seeds=config.unclaimed_seeds,
            min_score=config.min_score,
        )
        # the tuned thresholds are a buffer, so they travel in the checkpoint's state dict
        self.register_buffer("extraction", _params_tensor(params))

    # ---------------------------------------------------------------------------------------
    # the interface

    @property
    def extraction_params(self) -> ExtractionParams:
        """The instance extraction thresholds in use (tuned on val after training epochs)."""
        values = self.extraction.tolist()
        return ExtractionParams.from_dict(dict(zip(_PARAM_NAMES, values, strict=True)))

    @extraction_params.setter
    def extraction_params(self, params: ExtractionParams) -> None:
        self.extraction.copy_(_params_tensor(params))

    @property
    def default_score_threshold(self) -> float:
        """No further score floor: the extraction drops fields below its tuned ``min_score``."""
        return 0.0

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        """Checkpoints from before the depth, seed and score settings keep their old rule."""
        key = prefix + "extraction"
        stored = state_dict.get(key)
        if stored is not None and stored.numel() < len(_PARAM_NAMES):
            old_rule = _params_tensor(ExtractionParams(unclaimed_seeds=True))
            state_dict[key] = torch.cat([stored.to(old_rule.dtype), old_rule[stored.numel() :]])
        super()._load_from_state_dict(state_dict, prefix, *args)

    def training_step(
        self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """Weighted cross-entropy plus the region loss on the three-class targets."""
        self.net.train()
        logits = self._logits(images)
        target = torch.stack(
            [
                boundary_target(
                    t["masks"],
                    ignore=t.get("ignore"),
                    valid=t.get("valid"),
                    width=self.config.boundary_width,
                )
                for t in targets
            ]
        )
        weight = torch.tensor(
            [1.0, 1.0, self.config.boundary_weight], device=logits.device, dtype=logits.dtype
        )
        known = target != IGNORE_INDEX
        losses = {
            "loss_ce": F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX)
            if known.any()
            else logits.sum() * 0.0
        }
        if self.config.region_loss != "none" and self.config.region_weight > 0:
            losses[f"loss_{self.config.region_loss}"] = self.config.region_weight * (
                self._region_loss(logits, target, known)
            )
        return losses

    @torch.no_grad()
    def dense_maps(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Per chip: ``extent`` (interior + boundary) and ``boundary`` probabilities, ``valid``."""
        self.net.eval()
        probabilities = torch.softmax(self._logits(images).float(), dim=1)
        out = []
        for image, p in zip(images, probabilities, strict=True):
            height, width = image.shape[-2:]
            p = p[:, :height, :width]
            out.append(
                {
                    "extent": p[INTERIOR] + p[BOUNDARY],
                    "boundary": p[BOUNDARY],
                    "valid": self.normaliser.valid(image),
                }
            )
        return out

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[ChipPrediction]:
        """Fields of each raw chip by watershed on the predicted maps (see chip_prediction)."""
        return [self._fields_of(maps) for maps in self.dense_maps(images)]

    def calibrate(self, data: ChipDataset, *, batch_size: int = 4) -> dict[str, float]:
        """Tune the extraction thresholds for the best object F1 on ``data`` (the val split).

        Returns the tuned values and the F1 reached, for the training log; F1 is NaN, and the
        thresholds are kept, when the chips hold no truth field to find.
        """
        if not self.config.tune_on_val or len(data) == 0:
            return {}
        return self._tuned(self._split_maps(data, batch_size))

    def calibrate_and_predict(
        self, data: ChipDataset, *, batch_size: int = 4
    ) -> tuple[dict[str, float], dict[int, ChipPrediction]]:
        """:meth:`calibrate`, then the fields of each chip from the same maps (one model run)."""
        chips = self._split_maps(data, batch_size)
        tuned = self._tuned(chips) if self.config.tune_on_val and chips else {}
        return tuned, {int(target["image_id"]): self._fields_of(maps) for maps, target in chips}

    def _fields_of(self, maps: dict[str, torch.Tensor]) -> ChipPrediction:
        """One chip's fields, extracted from its maps with the current settings."""
        params = self.extraction_params
        fields = extract_fields(
            maps["extent"].cpu().numpy(), maps["boundary"].cpu().numpy(),
            maps["valid"].cpu().numpy(), params,
        )  # fmt: skip
        return chip_prediction(fields, maps, params)

    def _split_maps(
        self, data: ChipDataset, batch_size: int
    ) -> list[tuple[dict[str, torch.Tensor], dict[str, Any]]]:
        """The maps of every chip of a split (on the CPU: a GPU keeps one batch), its target."""
        device = self.extraction.device
        chips = []
        for start in range(0, len(data), batch_size):
            items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
            maps = self.dense_maps([image.to(device) for image, _ in items])
            chips += [
                ({name: value.cpu() for name, value in m.items()}, target)
                for (_, target), m in zip(items, maps, strict=True)
            ]
        return chips

    def _tuned(
        self, chips: list[tuple[dict[str, torch.Tensor], dict[str, Any]]]
    ) -> dict[str, float]:
        """Tune the extraction on chips' maps and targets; what was tuned, for the log."""
        samples = [
            (m["extent"].cpu().numpy(), m["boundary"].cpu().numpy(), m["valid"].cpu().numpy(),
             _truth_labels(target))
            for m, target in chips
        ]  # fmt: skip
        if not any((truth > 0).any() for *_, truth in samples):
            # nothing to find: F1 would be 1 for finding nothing, and pick this epoch as best
            return {"object_f1": float("nan")}
        base = self.extraction_params
        tuned = [tune_params(samples, grid, base=base) for grid in CALIBRATION_GRIDS]
        params, f1 = max(tuned, key=lambda pair: pair[1])  # a tie keeps the first grid's
        self.extraction_params = params
        return {
            "object_f1": float(f1),
            "extent_threshold": params.extent_threshold,
            "marker_threshold": params.marker_threshold,
            "marker_depth": params.marker_depth,
            "unclaimed_seeds": float(params.unclaimed_seeds),
            "min_score": params.min_score,
        }

    # ---------------------------------------------------------------------------------------
    # helpers

    def _logits(self, images: Sequence[torch.Tensor]) -> torch.Tensor:
        """(B, 3, H', W') logits of normalised chips padded to a multiple of the net's stride."""
        normalised = self.normalise(images)
        stride = 2**self.config.encoder_depth
        height = max(image.shape[-2] for image in normalised)
        width = max(image.shape[-1] for image in normalised)
        padded_h = -(-height // stride) * stride
        padded_w = -(-width // stride) * stride
        batch = torch.stack(
            [
                F.pad(image, (0, padded_w - image.shape[-1], 0, padded_h - image.shape[-2]))
                for image in normalised
            ]
        )
        return self.net(batch)[:, :, :height, :width]

    def _region_loss(
        self, logits: torch.Tensor, target: torch.Tensor, known: torch.Tensor
    ) -> torch.Tensor:
        """Soft Dice or Tversky loss over the interior and boundary classes, known pixels only."""
        probabilities = torch.softmax(logits.float(), dim=1)[:, INTERIOR:]
        weight = known.unsqueeze(1).float()
        truth = torch.stack([target == INTERIOR, target == BOUNDARY], dim=1).float() * weight
        probabilities = probabilities * weight
        dims = (0, 2, 3)
        overlap = (probabilities * truth).sum(dims)
        false_pos = (probabilities * (1 - truth)).sum(dims)
        false_neg = ((1 - probabilities) * truth).sum(dims)
        if self.config.region_loss == "tversky":
            alpha, beta = self.config.tversky_alpha, self.config.tversky_beta
        else:
            alpha = beta = 0.5  # Dice
        score = (overlap + 1.0) / (overlap + alpha * false_pos + beta * false_neg + 1.0)
        return (1.0 - score).mean()


#: The order of the ``extraction`` buffer (new settings are appended, see _load_from_state_dict).
_PARAM_NAMES = ("extent_threshold", "marker_threshold", "min_marker_pixels", "min_field_pixels",
                "marker_depth", "unclaimed_seeds", "min_score")  # fmt: skip


def _params_tensor(params: ExtractionParams) -> torch.Tensor:
    values = params.to_dict()
    return torch.tensor([float(values[name]) for name in _PARAM_NAMES], dtype=torch.float64)


def _truth_labels(target: dict[str, Any]) -> np.ndarray:
    """A chip's truth as a label image; ignored and invalid pixels -1."""
    labels = instance_labels(target["masks"]).cpu().numpy()
    unknown = np.zeros(labels.shape, bool)
    if target.get("ignore") is not None:
        unknown |= target["ignore"].cpu().numpy().astype(bool)
    if target.get("valid") is not None:
        unknown |= ~target["valid"].cpu().numpy().astype(bool)
    labels[unknown] = -1
    return labels


def chip_prediction(
    fields: ExtractedFields, maps: dict[str, torch.Tensor], params: ExtractionParams
) -> ChipPrediction:
    """Extracted fields as a ChipPrediction with soft, disjoint boxed masks; maps in ``dense``.

    The masks are the extracted regions, valued by the extent probability rescaled so that the
    extraction's threshold sits at 0.5, the stitcher's claim level.
    """
    extent = maps["extent"]
    count = len(fields.scores)
    threshold = params.extent_threshold
    level = 0.5 + 0.5 * ((extent - threshold) / max(1.0 - threshold, 1e-6)).clamp(0.0, 1.0)
    masks = BoxedMasks.from_labels(fields.labels, count, level)
    return ChipPrediction(
        masks=masks,
        scores=torch.from_numpy(np.asarray(fields.scores, dtype=np.float32)).to(extent.device),
        labels=torch.ones(count, dtype=torch.int64, device=extent.device),
        touches_edge=touches_edge(masks),
        dense={"extent": extent, "boundary": maps["boundary"]},
    )
