"""An oracle chip model, to measure the stitcher apart from any trained model.

The oracle's scene has one band, the truth field id of every pixel (0: no field), written by
:func:`write_truth_raster`. For each chip the oracle returns what a perfect chip model would see:
one mask per field present in the chip, cut at the chip edges, without field ids (each chip
numbers its instances afresh, so the stitcher must find the pieces of a field on its own).

The noisy mode is specified exactly, as real models are not perfect:

* every mask leaks ``leak_pixels`` (2) pixels into each touching neighbouring field (a square
  dilation kept only on the fields it shares an edge with, never on background or on fields
  across a gap);
* scores are uniform random in [0.5, 1];
* ``drop_share`` (10 %) of the pieces that touch a chip edge are missing.

Masks are binary (probability 1 on the mask): the leaked pixels are as confident as the rest.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import geopandas as gpd
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from fieldseg.atomic_output import atomic_file
from fieldseg.band_statistics import BandStatistics
from fieldseg.boundary_targets import BOUNDARY, INTERIOR, label_classes
from fieldseg.instance_extraction import ExtractionParams, extract_fields
from fieldseg.models.base import ChipPrediction, FieldModel
from fieldseg.models.boxed_masks import BoxedMasks
from fieldseg.raster_io import open_raster, write_geotiff
from fieldseg.rasterization import rasterize_labels_in_strips
from fieldseg.vector_io import read_vector

#: The oracle scene's one band.
ORACLE_BAND = "field_id"


class OracleFieldModel(FieldModel):
    """A perfect (or exactly specified noisy) chip model over a truth-id scene.

    Args:
        noisy: leak masks, randomise scores and drop edge pieces (module docstring).
        seed: the noisy mode's random seed (chips draw from one generator in call order).
        nodata: the id raster's nodata value, if any.
        leak_pixels: how far masks leak into touching neighbours in noisy mode.
        drop_share: share of edge-touching pieces missing in noisy mode.
    """

    family = "oracle"
    checks_scene_statistics = False  # it reads field ids, not reflectances

    def __init__(
        self,
        *,
        noisy: bool = False,
        seed: int = 0,
        nodata: float | None = None,
        leak_pixels: int = 2,
        drop_share: float = 0.1,
    ) -> None:
        stats = BandStatistics(name=ORACLE_BAND, p2=0, p98=2**31 - 1, mean=0, std=1, n_pixels=1)
        super().__init__([ORACLE_BAND], [stats], nodata)
        self.noisy = noisy
        self.leak_pixels = leak_pixels
        self.drop_share = drop_share
        self._rng = np.random.default_rng(seed)
        self._anchor = torch.nn.Parameter(torch.zeros(1))  # so .to(device) and .parameters() work

    def training_step(
        self, images: Sequence[torch.Tensor], targets: Sequence[dict[str, Any]]
    ) -> dict[str, torch.Tensor]:
        """The oracle knows the answer; it has nothing to learn."""
        raise TypeError("the oracle model is not trained")

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[ChipPrediction]:
        """The fields of each chip as masks, cut at the chip edge (noisy if asked)."""
        return [self._predict_chip(image) for image in images]

    def _predict_chip(self, image: torch.Tensor) -> ChipPrediction:
        image = image.cpu()  # the truth lookups run on the CPU, wherever the chip comes from
        ids = image[0].round().to(torch.int64)
        ids = torch.where(self.normaliser.valid(image), ids, torch.zeros_like(ids))
        present = torch.unique(ids)
        present = present[present > 0]
        index = torch.zeros(int(ids.max()) + 1, dtype=torch.int64)
        index[present] = torch.arange(1, len(present) + 1)
        local = index[ids].numpy()  # 0 background, k: the k-th present field
        masks = BoxedMasks.from_labels(local, len(present))
        scores = torch.ones(len(present))
        if self.noisy and len(present):
            masks = self._leak(masks, local)
            scores = torch.from_numpy(self._rng.uniform(0.5, 1.0, len(present))).float()
            edge = masks.touches_edge().numpy()
            dropped = edge & (self._rng.random(len(present)) < self.drop_share)
            masks, scores = masks.select(~dropped), scores[torch.from_numpy(~dropped)]
        return ChipPrediction(
            masks=masks,
            scores=scores,
            labels=torch.ones(len(scores), dtype=torch.int64),
            touches_edge=masks.touches_edge(),
        )

    def _leak(self, masks: BoxedMasks, local: np.ndarray) -> BoxedMasks:
        """Each mask grown by ``leak_pixels`` onto the fields it touches (shares an edge with).

        Field k's mask gains every pixel within ``leak_pixels`` (chessboard distance) of it
        that lies in a field sharing an edge with k; its box grows to hold them.
        """
        n = len(masks)
        touching = np.zeros((n + 1, n + 1), dtype=bool)
        for a, b in ((local[:, 1:], local[:, :-1]), (local[1:], local[:-1])):
            pairs = (a != b) & (a > 0) & (b > 0)
            touching[a[pairs], b[pairs]] = True
            touching[b[pairs], a[pairs]] = True
        height, width = local.shape
        reach = self.leak_pixels
        square = np.ones((2 * reach + 1, 2 * reach + 1), dtype=bool)
        boxes, crops = [], []  # the crops end to end: the flat form the stitcher reads
        values = masks.values.numpy()
        starts, sizes = masks.offsets()
        for k, (x0, y0, x1, y1) in enumerate(masks.boxes.tolist(), start=1):
            if not touching[k].any():
                boxes.append((x0, y0, x1, y1))
                crops.append(values[starts[k - 1] : starts[k - 1] + sizes[k - 1]])
                continue
            x0, y0 = max(0, x0 - reach), max(0, y0 - reach)
            x1, y1 = min(width, x1 + reach), min(height, y1 + reach)
            window = local[y0:y1, x0:x1]
            own = window == k
            grown = ndi.binary_dilation(own, structure=square) & touching[k][window]
            boxes.append((x0, y0, x1, y1))
            crops.append((own | grown).astype(np.float32).ravel())
        flat = np.concatenate(crops) if crops else np.zeros(0, np.float32)
        box_tensor = torch.tensor(boxes, dtype=torch.int64).reshape(-1, 4)
        return BoxedMasks.from_flat(box_tensor, torch.from_numpy(flat), height, width)


class DenseOracleFieldModel(OracleFieldModel):
    """A perfect (or exactly specified noisy) per-pixel model over a truth-id scene.

    For each chip it returns what a perfect boundary-aware U-Net would: the field extent and
    the boundary band of every field (its own inner edge, one pixel; the chip edge is not a
    field edge, as in :mod:`fieldseg.boundary_targets`). Noisy mode, like a softmax output: the
    probabilities of background, interior and boundary are each blurred (Gaussian, sigma
    ``blur_sigma`` px), perturbed by uniform noise of ``noise`` either way, clipped to [0, 1]
    and renormalised to sum to one; chips draw from one generator in call order. Its
    ``predict`` goes through the same extraction as the U-Net
    (:mod:`fieldseg.instance_extraction`).
    """

    family = "dense_oracle"
    dense_output = True

    def __init__(
        self,
        *,
        noisy: bool = False,
        seed: int = 0,
        nodata: float | None = None,
        blur_sigma: float = 1.0,
        noise: float = 0.15,
        params: ExtractionParams | None = None,
    ) -> None:
        super().__init__(noisy=noisy, seed=seed, nodata=nodata)
        self.blur_sigma = blur_sigma
        self.noise = noise
        self.extraction_params = params or ExtractionParams()

    @torch.no_grad()
    def dense_maps(self, images: Sequence[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        """Per chip ``extent``, ``boundary`` (probabilities) and ``valid``."""
        out = []
        for image in images:
            image = image.cpu()
            valid = self.normaliser.valid(image)
            ids = torch.where(valid, image[0].round().to(torch.int64), 0)
            classes = label_classes(ids)
            probabilities = F.one_hot(classes, 3).permute(2, 0, 1).float()
            if self.noisy:
                probabilities = torch.stack([self._perturb(p) for p in probabilities])
                probabilities = probabilities / probabilities.sum(dim=0).clamp_min(1e-6)
            extent = probabilities[INTERIOR] + probabilities[BOUNDARY]
            out.append({"extent": extent, "boundary": probabilities[BOUNDARY], "valid": valid})
        return out

    @torch.no_grad()
    def predict(self, images: Sequence[torch.Tensor]) -> list[ChipPrediction]:
        """Fields of each chip extracted from its maps, as the U-Net's predictions are."""
        from fieldseg.models.unet_boundary import chip_prediction

        predictions = []
        for maps in self.dense_maps(images):
            fields = extract_fields(
                maps["extent"].numpy(), maps["boundary"].numpy(), maps["valid"].numpy(),
                self.extraction_params,
            )  # fmt: skip
            predictions.append(chip_prediction(fields, maps, self.extraction_params))
        return predictions

    def _perturb(self, values: torch.Tensor) -> torch.Tensor:
        radius = max(1, math.ceil(3 * self.blur_sigma))
        offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (offsets / self.blur_sigma) ** 2)
        kernel = kernel / kernel.sum()
        padded = F.pad(values[None, None], (radius,) * 4, mode="replicate")
        blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
        blurred = F.conv2d(blurred, kernel.view(1, 1, -1, 1))[0, 0]
        noise = self._rng.uniform(-self.noise, self.noise, size=tuple(values.shape))
        return (blurred + torch.from_numpy(noise).float()).clamp(0.0, 1.0)


def write_truth_raster(
    fields: str | os.PathLike[str] | gpd.GeoDataFrame,
    like: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    overwrite: bool = False,
) -> int:
    """Burn truth polygons (ids 1..N in row order) onto the grid of the scene ``like``.

    Returns:
        The number of fields burnt.
    """
    with open_raster(like) as src:
        profile = {"crs": src.crs, "transform": src.transform}
        height, width = src.height, src.width
    frame = fields if isinstance(fields, gpd.GeoDataFrame) else read_vector(fields)
    frame = frame.to_crs(profile["crs"])
    ids = np.zeros((height, width), np.int32)
    rasterize_labels_in_strips(frame.geometry.values, transform=profile["transform"], out=ids)
    with atomic_file(out, overwrite=overwrite) as tmp:
        write_geotiff(tmp, ids[None], crs=profile["crs"], transform=profile["transform"],
                      band_names=[ORACLE_BAND])  # fmt: skip
    return len(frame)
