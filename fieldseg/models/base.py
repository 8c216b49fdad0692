"""The model interface: what the trainer, the predictor and the stitcher rely on.

Every model family is a :class:`FieldModel`. It is built from its resolved config and the
dataset's bands; it normalises raw pixels itself (:class:`BandNormaliser`, from the band
statistics the checkpoint carries), so callers always pass raw pixels; a training step returns
named losses; prediction returns, per chip, instances with soft masks and the evidence the
stitcher needs. The contract is written down in docs/formats.md.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, get_args

import torch
from torch import nn

from fieldseg.band_statistics import BandStatistics
from fieldseg.models.boxed_masks import BoxedMasks

#: Where a model's starting weights come from: torchvision's ImageNet or COCO weights, or none.
Pretrained = Literal["imagenet", "coco", "none"]
PRETRAINED_CHOICES: tuple[str, ...] = get_args(Pretrained)

if TYPE_CHECKING:
    from fieldseg.models import ModelSpec


@dataclass
class ChipPrediction:
    """The instances a model finds in one chip, in chip pixels.

    Attributes:
        masks: (N, H, W) float32 mask probabilities (soft, not thresholded), or the same
            masks as :class:`BoxedMasks`, each stored inside its box: far smaller and faster
            to stitch when a chip holds hundreds of small fields.
        scores: (N,) instance confidence.
        labels: (N,) int64 category ids (as in the dataset's COCO files).
        touches_edge: (N,) bool, True where the chip edge cuts the instance (its mask at 0.5
            reaches the outermost row or column), so a piece of a larger field.
        dense: optional per-pixel outputs of families that have them, e.g. ``{"extent": (H, W),
            "boundary": (H, W)}`` probabilities; empty for instance-only families.
    """

    masks: torch.Tensor | BoxedMasks
    scores: torch.Tensor
    labels: torch.Tensor
    touches_edge: torch.Tensor
    dense: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    def dense_masks(self) -> torch.Tensor:
        """The masks as one (N, H, W) stack, whichever form the model returned."""
        return self.masks.dense() if isinstance(self.masks, BoxedMasks) else self.masks


class BandNormaliser(nn.Module):
    """Raw pixels -> model input: clip to the 2nd-98th percentile, standardise, zero nodata.

    The statistics are buffers, so they travel inside the checkpoint's state dict and a model
    can never be fed with other statistics than those it was trained with.
    """

    def __init__(self, statistics: Sequence[BandStatistics], nodata: float | None) -> None:
        super().__init__()
        self.register_buffer("low", torch.tensor([s.p2 for s in statistics]).view(-1, 1, 1))
        self.register_buffer("high", torch.tensor([s.p98 for s in statistics]).view(-1, 1, 1))
        self.register_buffer("mean", torch.tensor([s.mean for s in statistics]).view(-1, 1, 1))
        std = torch.tensor([max(s.std, 1e-6) for s in statistics]).view(-1, 1, 1)
        self.register_buffer("std", std)
        self.nodata = nodata

    def valid(self, image: torch.Tensor) -> torch.Tensor:
        """(H, W) True where no band is nodata or NaN (the nodata rule of docs/formats.md)."""
        invalid = torch.isnan(image).any(dim=0)
        if self.nodata is not None:
            invalid |= (image == self.nodata).any(dim=0)
        return ~invalid

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Normalise one (bands, H, W) chip of raw pixels."""
        valid = self.valid(image)
        clipped = torch.minimum(torch.maximum(image, self.low), self.high)
        out = (clipped - self.mean) / self.std
        return torch.where(valid, out, torch.zeros_like(out))


class FieldModel(nn.Module, ABC):
    """A model family behind the one interface the rest of fieldseg uses.

    Args:
        band_names: the dataset's bands, in order.
        statistics: their normalisation statistics (from dataset.json, then the checkpoint).
        nodata: the dataset's nodata value.
    """

    family: ClassVar[str]
    #: Families with per-pixel outputs set this and implement ``dense_maps(images)`` (per chip
    #: ``extent``, ``boundary`` and ``valid`` maps) and ``extraction_params``; ``predict`` may
    #: then blend overlapping chips' maps instead of stitching chip instances.
    dense_output: ClassVar[bool] = False
    #: The val metric (a key of the training log without ``val_``) that picks ``best.pt`` and
    #: drives early stopping: COCO mask mAP for instance models; a family whose output is
    #: decided by calibrated post-processing may pick the object F1 its calibration reports.
    selection_metric: ClassVar[str] = "segm_mAP"
    #: Whether ``predict`` compares a scene's band values with the training statistics and
    #: warns when they are far apart; off for models that read labels, not reflectances.
    checks_scene_statistics: ClassVar[bool] = True

    def __init__(
        self, band_names: Sequence[str], statistics: Sequence[BandStatistics], nodata: float | None
    ) -> None:
        super().__init__()
        if len(statistics) != len(band_names):
            raise ValueError("one statistics entry per band is needed")
        self.band_names = tuple(band_names)
        self.normaliser = BandNormaliser(statistics, nodata)
        #: What :func:`fieldseg.models.build_model` built it for (chip size, classes), so that
        #: ``predict_scene`` given the model object predicts as given its checkpoint.
        self.spec: ModelSpec | None = None
        #: The output's ``model`` attribute: family and checkpoint hash when loaded from one.
        self.source: str | None = None

    def normalise(self, images: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """Normalised copies of raw chips."""
        return [self.normaliser(image) for image in images]

    def forward(
        self,
        images: Sequence[torch.Tensor],
        targets: Sequence[dict[str, Any]] | None = None,
    ) -> dict[str, torch.Tensor] | list[ChipPrediction]:
        """Losses with ``targets``, predictions without: the call DistributedDataParallel wraps."""
        if targets is not None:
            return self.training_step(images, targets)
        return self.predict(images)

    @abstractmethod
    def training_step(
        self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """Named losses for a batch of raw chips and their targets (see ChipDataset)."""

    @abstractmethod
    def predict(self, images: Sequence[torch.Tensor]) -> list[ChipPrediction]:
        """Instances in each raw chip."""

    def calibrate(self, data: Any, *, batch_size: int = 4) -> dict[str, float]:
        """Tune post-processing settings on a labelled split (val) after an epoch.

        A family whose predictions depend on thresholds (the U-Net's watershed) tunes them here
        and keeps them in its state dict, so the checkpoint carries them. Returns what was tuned
        and the score reached, for the training log; the default tunes nothing.
        """
        return {}

    def calibrate_and_predict(
        self, data: Any, *, batch_size: int = 4
    ) -> tuple[dict[str, float], dict[int, ChipPrediction]]:
        """:meth:`calibrate` on a labelled split, then its chips' predictions by image id.

        What validation needs after every epoch. A family whose calibration already runs the
        model over the split overrides this to run it only once.
        """
        calibrated = self.calibrate(data, batch_size=batch_size)
        device = next(self.parameters()).device
        predictions = {}
        for start in range(0, len(data), batch_size):
            items = [data[i] for i in range(start, min(start + batch_size, len(data)))]
            outputs = self.predict([image.to(device) for image, _ in items])
            for (_, target), output in zip(items, outputs, strict=True):
                predictions[int(target["image_id"])] = output
        return calibrated, predictions

    @property
    def default_score_threshold(self) -> float:
        """The score below which ``predict`` drops fields unless told otherwise.

        0.5 for instance models; a family that already drops weak fields by a setting tuned on
        val says 0.
        """
        return 0.5

    def set_score_threshold(self, score: float) -> None:
        """Let the model drop instances scoring below ``score`` early.

        The caller drops them anyway; a family may skip work for them (masks for boxes that
        will not be kept, say). The default does nothing.
        """


def touches_edge(masks: torch.Tensor | BoxedMasks, threshold: float = 0.5) -> torch.Tensor:
    """(N,) True where a (N, H, W) mask reaches the first or last row or column."""
    if isinstance(masks, BoxedMasks):
        return masks.touches_edge(threshold)
    binary = masks > threshold
    if binary.shape[0] == 0:
        return torch.zeros(0, dtype=torch.bool, device=masks.device)
    return (
        binary[:, 0, :].any(dim=1)
        | binary[:, -1, :].any(dim=1)
        | binary[:, :, 0].any(dim=1)
        | binary[:, :, -1].any(dim=1)
    )
