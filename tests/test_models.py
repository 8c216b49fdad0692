"""The model interface and the Mask R-CNN family: settings, input layer, losses, predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import Dataset
from torch import nn

from fieldseg.band_statistics import BandStatistics
from fieldseg.chip_dataset import ChipDataset
from fieldseg.dataset_description import DatasetDescription
from fieldseg.errors import ConfigError, InputFileError
from fieldseg.models import ModelSpec, build_model, model_config
from fieldseg.models.base import BandNormaliser, touches_edge
from fieldseg.models.boxed_masks import BoxedMasks
from fieldseg.models.input_layer import adapt_first_conv, load_weights_file, rgb_channels
from fieldseg.models.maskrcnn import MaskRCNNConfig, MaskRCNNFieldModel

BANDS = ["blue", "green", "red", "nir"]


def _stats(n: int = 4) -> list[BandStatistics]:
    return [BandStatistics(name=f"b{i}", p2=100, p98=3000, mean=1000, std=500, n_pixels=10)
            for i in range(n)]  # fmt: skip


def _light_model(**overrides: object) -> MaskRCNNFieldModel:
    torch.manual_seed(0)
    config = MaskRCNNConfig(backbone="resnet18", **overrides)  # type: ignore[arg-type]
    return MaskRCNNFieldModel(config, BANDS, _stats(), 0, chip_size=64, num_classes=1)


def test_field_settings_replace_torchvision_defaults() -> None:
    model = _light_model(upsample=2.0, mask_resolution=56)
    detector = model.detector
    assert detector.transform.min_size == (128,) and detector.transform.max_size == 128
    assert detector.roi_heads.detections_per_img == 300
    assert detector.rpn._pre_nms_top_n == {"training": 4000, "testing": 2000}
    assert detector.rpn._post_nms_top_n == {"training": 2000, "testing": 1000}
    assert detector.rpn.fg_bg_sampler.batch_size_per_image == 512
    assert detector.roi_heads.fg_bg_sampler.batch_size_per_image == 1024
    sizes = detector.rpn.anchor_generator.sizes
    assert min(min(level) for level in sizes) == 6 and max(max(level) for level in sizes) == 400
    assert detector.roi_heads.mask_roi_pool.output_size == (28, 28)  # -> 56 x 56 masks
    first = next(m for m in detector.backbone.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 4
    assert list(detector.transform.image_mean) == [0.0] * 4  # normalised by BandNormaliser


def test_first_conv_reuses_rgb_filters_and_their_mean() -> None:
    assert rgb_channels(["blue_d1", "nir_d1", "B04", "20210615_green"]) == [2, None, 0, 1]
    holder = nn.Sequential(nn.Conv2d(3, 2, 3, bias=True))
    old = holder[0].weight.detach().clone()
    new = adapt_first_conv(holder, ["red_d1", "nir_d1", "red_d2", "blue_d2", "swir"])
    assert holder[0] is new and new.in_channels == 5
    scale = 3 / 5
    assert torch.allclose(new.weight[:, 0], old[:, 0] * scale)
    assert torch.allclose(new.weight[:, 2], old[:, 0] * scale)
    assert torch.allclose(new.weight[:, 3], old[:, 2] * scale)
    assert torch.allclose(new.weight[:, 1], old.mean(dim=1) * scale)
    assert torch.allclose(new.weight[:, 4], old.mean(dim=1) * scale)


def test_normaliser_clips_standardises_and_zeroes_nodata() -> None:
    normaliser = BandNormaliser(_stats(2), nodata=-1)
    image = torch.tensor([[[50.0, 1000.0], [5000.0, -1.0]], [[1500.0, 1000.0], [1000.0, 7.0]]])
    out = normaliser(image)
    assert torch.allclose(out[0, 0], torch.tensor([(100 - 1000) / 500, 0.0]))
    assert out[0, 1, 0] == (3000 - 1000) / 500
    assert out[0, 1, 1] == 0 and out[1, 1, 1] == 0  # one band nodata: the pixel is nodata
    assert out[1, 0, 0] == 1.0


def test_training_step_gives_finite_losses_that_train(basic_dataset: Dataset) -> None:
    description = DatasetDescription.load(basic_dataset.root)
    config = model_config({"family": "maskrcnn", "backbone": "resnet18"})
    torch.manual_seed(0)
    model = build_model(config, ModelSpec.from_description(description))
    data = ChipDataset(basic_dataset.root, "train")
    images, targets = zip(*(data[i] for i in range(2)), strict=True)
    losses = model.training_step(list(images), list(targets))
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier",
                           "loss_box_reg", "loss_mask"}  # fmt: skip
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad and p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # a chip without fields is a valid training example too
    empty = {
        **targets[0],
        "boxes": torch.zeros((0, 4)),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros((0, 128, 128), dtype=torch.uint8),
    }
    assert torch.isfinite(sum(model.training_step([images[0]], [empty]).values()))


def test_predictions_are_soft_masks_at_chip_size() -> None:
    model = _light_model(box_score_thresh=0.0)
    image = torch.full((4, 64, 64), 1200.0)
    image[:, 10:30, 10:40] = 2500.0
    (prediction,) = model.predict([image])
    n = len(prediction)
    assert isinstance(prediction.masks, BoxedMasks)  # pasted into their boxes only
    masks = prediction.dense_masks()
    assert masks.shape == (n, 64, 64) and masks.dtype == torch.float32
    assert prediction.scores.shape == (n,) and prediction.labels.shape == (n,)
    if n:
        assert masks.min() >= 0 and masks.max() <= 1
    assert torch.equal(prediction.touches_edge, touches_edge(masks))
    assert prediction.dense == {}


def test_touches_edge() -> None:
    masks = torch.zeros((3, 8, 8))
    masks[0, 2:5, 2:5] = 0.9  # inside
    masks[1, 0:3, 3:5] = 0.9  # top row
    masks[2, 3:5, 7] = 0.4  # right column, but below 0.5
    assert touches_edge(masks).tolist() == [False, True, False]
    assert touches_edge(torch.zeros((0, 8, 8))).shape == (0,)


@pytest.mark.usefixtures("offline_weights")
def test_offline_pretrained_weights_are_one_clear_error() -> None:
    config = MaskRCNNConfig(backbone="resnet18")
    with pytest.raises(ConfigError, match=r"--pretrained none.*--weights PATH"):
        MaskRCNNFieldModel(config, BANDS, _stats(), 0, chip_size=64, num_classes=1,
                           pretrained="imagenet")  # fmt: skip
    with pytest.raises(ConfigError, match="resnet50 backbone only"):
        MaskRCNNFieldModel(config, BANDS, _stats(), 0, chip_size=64, num_classes=1,
                           pretrained="coco")  # fmt: skip


def test_weights_file_loads_by_key_suffix(tmp_path: Path) -> None:
    source = _light_model()
    backbone = source.detector.backbone.body.state_dict()
    path = tmp_path / "encoder.pt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in backbone.items()}}, path)
    target = _light_model()
    key = "detector.backbone.body.layer1.0.conv1.weight"
    with torch.no_grad():
        target.state_dict()[key].zero_()
    loaded, total = load_weights_file(target, path, BANDS)
    assert total == len(backbone) and loaded == len(backbone)
    assert torch.equal(target.state_dict()[key], source.state_dict()[key])

    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(InputFileError, match=r"junk\.pt is not a weights file \(PyTorch could not"):
        load_weights_file(target, tmp_path / "junk.pt", BANDS)
    torch.save({"something.else": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(ConfigError, match=r"no tensor .* fits the model"):
        load_weights_file(target, tmp_path / "other.pt", BANDS)


def test_weights_file_first_conv_must_fit_the_bands(tmp_path: Path) -> None:
    source = _light_model()
    backbone = source.detector.backbone.body.state_dict()
    key = "detector.backbone.body.conv1.weight"
    target = _light_model()

    rgb = torch.randn(64, 3, 7, 7)  # an RGB (ImageNet-style) stem is adapted to the bands
    torch.save({**backbone, "conv1.weight": rgb}, tmp_path / "rgb.pt")
    load_weights_file(target, tmp_path / "rgb.pt", BANDS)
    expected = torch.stack([rgb[:, 2], rgb[:, 1], rgb[:, 0], rgb.mean(dim=1)], dim=1) * 0.75
    assert torch.allclose(target.state_dict()[key], expected)

    torch.save({**backbone, "conv1.weight": torch.randn(64, 13, 7, 7)}, tmp_path / "s2.pt")
    with pytest.raises(ConfigError, match=r"take 13 input bands; the dataset has 4 \(blue,"):
        load_weights_file(target, tmp_path / "s2.pt", BANDS)

    checkpoint = {"format": "fieldseg-checkpoint", "bands": ["red", "green", "blue", "nir"],
                  "state_dict": source.state_dict()}  # fmt: skip
    torch.save(checkpoint, tmp_path / "other-bands.pt")
    with pytest.raises(ConfigError, match=r"trained on bands \['red', .*the dataset has"):
        load_weights_file(target, tmp_path / "other-bands.pt", BANDS)
    checkpoint["bands"] = BANDS
    torch.save(checkpoint, tmp_path / "same-bands.pt")
    loaded, _ = load_weights_file(target, tmp_path / "same-bands.pt", BANDS)
    assert loaded == len(source.state_dict())
    run = tmp_path / "run"  # a run folder stands for its best.pt
    run.mkdir()
    with pytest.raises(InputFileError, match=r"run holds no best\.pt or last\.pt"):
        load_weights_file(target, run, BANDS)
    (tmp_path / "same-bands.pt").rename(run / "best.pt")
    assert load_weights_file(target, run, BANDS)[0] == len(source.state_dict())


def test_chips_keep_their_size_whatever_the_training_chips() -> None:
    model = _light_model(upsample=2.0)  # built for 64 px chips
    (prediction,) = model.predict([torch.full((4, 96, 96), 1000.0)])
    assert prediction.masks.shape[-2:] == (96, 96)
    assert model.detector.transform.min_size == (192,) and model.detector.transform.max_size == 192


def test_the_score_threshold_reaches_the_detector() -> None:
    model = _light_model(box_score_thresh=0.0)
    torch.manual_seed(1)
    image = torch.rand((4, 64, 64)) * 3000
    (everything,) = model.predict([image])
    threshold = float(everything.scores.quantile(0.5))
    model.set_score_threshold(threshold)
    (kept,) = model.predict([image])
    assert model.detector.roi_heads.score_thresh == threshold
    assert 0 < len(kept) < len(everything) and kept.scores.min() > threshold


def test_mobilenet_fpn_starts_at_stride_4() -> None:
    torch.manual_seed(0)
    config = MaskRCNNConfig(backbone="mobilenet_v3_large")
    model = MaskRCNNFieldModel(config, BANDS, _stats(), 0, chip_size=64, num_classes=1)
    features = model.detector.backbone(torch.zeros(1, 4, 64, 64))
    assert [tuple(f.shape[-2:]) for f in features.values()] == [(16, 16), (8, 8), (4, 4),
                                                                (2, 2), (1, 1)]  # fmt: skip
    trainable = [p.requires_grad for p in model.detector.backbone.body.parameters()]
    assert all(trainable)  # trainable_layers 5 means the whole backbone, as for ResNets
    image = torch.full((4, 64, 64), 1000.0)
    target = {"boxes": torch.tensor([[8.0, 8.0, 30.0, 30.0]]), "labels": torch.tensor([1]),
              "masks": torch.zeros((1, 64, 64), dtype=torch.uint8)}  # fmt: skip
    target["masks"][0, 8:30, 8:30] = 1
    losses = model.training_step([image], [target])
    assert all(torch.isfinite(v) for v in losses.values())


def test_model_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"model.family must be one of maskrcnn"):
        model_config({"family": "detr"})
    with pytest.raises(ConfigError, match=r"model.backbone"):
        model_config({"family": "maskrcnn", "backbone": "vgg16"})
    with pytest.raises(ConfigError, match=r"model.anchors"):
        model_config({"family": "maskrcnn", "anchors": [[4]]})
    with pytest.raises(ConfigError, match="as many sizes on every FPN level"):
        MaskRCNNFieldModel(MaskRCNNConfig(backbone="resnet18", anchor_sizes=[[4], [8, 16], [32],
                                                                              [64], [128]]),
                           BANDS, _stats(), 0, chip_size=64, num_classes=1)  # fmt: skip
    assert np.isclose(MaskRCNNConfig().upsample, 1.0)


def test_an_unknown_pretrained_source_is_refused() -> None:
    """The CLI offers a fixed choice; the library must not quietly train from scratch."""
    from fieldseg.cli.train_command import train
    from fieldseg.models.base import PRETRAINED_CHOICES

    with pytest.raises(ConfigError, match="pretrained must be one of imagenet, coco, none; got"):
        build_model(model_config({"family": "maskrcnn"}), None, pretrained="imagnet")  # type: ignore[arg-type]
    choice = next(p for p in train.params if p.name == "pretrained")
    assert tuple(choice.type.choices) == PRETRAINED_CHOICES  # type: ignore[attr-defined]
