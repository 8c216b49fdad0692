"""Run configs: the shipped ones validate, overrides apply, unknown keys are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fieldseg.errors import ConfigError, InputFileError
from fieldseg.run_config import load_run_config, save_run_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("maskrcnn_*.yaml")))
def test_shipped_configs_validate(name: str) -> None:
    config = load_run_config(CONFIGS / name)
    assert config.model["family"] == "maskrcnn"
    assert config.optimizer.name == "adam" and config.optimizer.lr == 1e-4
    assert (config.schedule.name, config.schedule.step_size, config.schedule.gamma) == (
        "step",
        5,
        0.1,
    )
    assert config.training.epochs == 20


def test_r50_config_follows_the_transfer_recipe() -> None:
    config = load_run_config(CONFIGS / "maskrcnn_r50_fpn.yaml")
    assert config.model["backbone"] == "resnet50" and config.training.batch_size == 8
    assert config.augmentation.hflip == 0.5 and config.augmentation.vflip == 0.5


def test_overrides_are_yaml_values_at_dotted_keys(tmp_path: Path) -> None:
    config = load_run_config(
        CONFIGS / "maskrcnn_r18_cpu.yaml",
        ["optimizer.lr=3e-4", "training.epochs=2", "model.aspect_ratios=[0.5, 1, 2]",
         "augmentation.enabled=false"],
    )  # fmt: skip
    assert config.optimizer.lr == 3e-4 and config.training.epochs == 2
    assert config.model["aspect_ratios"] == [0.5, 1, 2]
    assert config.augmentation.enabled is False
    save_run_config(config, tmp_path / "resolved.yaml")
    resolved = yaml.safe_load((tmp_path / "resolved.yaml").read_text())
    assert resolved["model"]["detections_per_chip"] == 300  # defaults written out
    assert resolved["training"]["epochs"] == 2
    again = load_run_config(tmp_path / "resolved.yaml")
    assert again.resolved() == config.resolved()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("training.epoch=3", "training.epoch: Extra inputs are not permitted"),
        ("model.backbone=vgg", "model.backbone"),
        ("optimizer.lr=-1", "optimizer.lr"),
        ("optimizer", "--set expects key=value"),
        ("training.epochs.x=1", "epochs is not a section"),
        ("model.family=detr", "model.family must be one of"),
    ],
)
def test_bad_entries_name_the_key(override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(CONFIGS / "maskrcnn_r18_cpu.yaml", [override])


def test_missing_or_broken_files(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="config not found"):
        load_run_config(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("model: [unclosed")
    with pytest.raises(InputFileError, match="not valid YAML"):
        load_run_config(tmp_path / "bad.yaml")
    (tmp_path / "nomodel.yaml").write_text("training:\n  epochs: 2\n")
    with pytest.raises(ConfigError, match="no model section"):
        load_run_config(tmp_path / "nomodel.yaml")


def test_warmup_climbs_linearly_to_the_scheduled_rate() -> None:
    config = load_run_config(CONFIGS / "yolact_r50_fpn.yaml",
                             ["schedule.warmup_steps=4", "schedule.warmup_factor=0.2"])  # fmt: skip
    assert [config.schedule.warmup_scale(step) for step in range(6)] == pytest.approx(
        [0.2, 0.4, 0.6, 0.8, 1.0, 1.0]
    )
    assert load_run_config(CONFIGS / "maskrcnn_r18_cpu.yaml").schedule.warmup_scale(0) == 1.0


def test_warmup_scales_one_step_and_gives_the_schedule_its_rate_back() -> None:
    import torch

    from fieldseg.training import _warmed_up

    weight = torch.nn.Parameter(torch.ones(1))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.1)
    weight.grad = torch.ones(1)
    with _warmed_up(optimizer, 0.1):
        assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
        optimizer.step()
    assert weight.item() == pytest.approx(1 - 0.05)
    assert optimizer.param_groups[0]["lr"] == 0.5
    scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.05)
