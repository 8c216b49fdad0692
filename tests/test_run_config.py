"""Run configs: the shipped ones validate, overrides apply, unknown keys are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fieldseg.errors import ConfigError, InputFileError
from fieldseg.run_config import load_resumed_config, load_run_config, save_run_config

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
        ("optimizer.lr=inf", "optimizer.lr: Input should be a finite number"),
        ("optimizer.lr=.nan", "optimizer.lr: Input should be a finite number"),
        ("model.upsample=.inf", "config: model.upsample: Input should be a finite number"),
        (
            "model.family=yolact",
            r"model.trainable_layers: Extra .* \(the yolact family's settings: fa",
        ),
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


def test_configs_that_are_folders_or_not_text_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match=r"config .* is a folder; -c expects a YAML file"):
        load_run_config(tmp_path)
    (tmp_path / "scene.tif").write_bytes(b"II*\x00\x08\x00\x00\x00\xff\xfe\x00")
    with pytest.raises(InputFileError, match=r"scene\.tif is not a YAML config: it is not a text"):
        load_run_config(tmp_path / "scene.tif")
    (tmp_path / "nul.yaml").write_bytes(b"II*\x00")  # valid UTF-8, but no YAML
    with pytest.raises(InputFileError, match=r"not valid YAML: unacceptable character #x0000"):
        load_run_config(tmp_path / "nul.yaml")
    (tmp_path / "bad.yaml").write_text("model:\n  family: maskrcnn\n  x: [unclosed\n")
    with pytest.raises(InputFileError) as caught:
        load_run_config(tmp_path / "bad.yaml")
    assert str(caught.value) == (
        f"{tmp_path / 'bad.yaml'} is not valid YAML: expected ',' or ']', but got '<stream end>' "
        "(line 4, column 1)"
    )


def _run_config(*overrides: str) -> dict[str, object]:
    """The resolved config a run would have saved, with these overrides."""
    return load_run_config(CONFIGS / "maskrcnn_r18_cpu.yaml", list(overrides)).resolved()


def test_a_resumed_run_may_change_only_when_it_stops() -> None:
    base = _run_config("optimizer.lr=0.002", "training.epochs=2")
    allowed = ["training.epochs=5", "training.max_minutes=30",
               "training.early_stopping_patience=2", "training.loader_workers=1"]  # fmt: skip
    repeated = ["optimizer.lr=0.002", "model.backbone=resnet18"]
    config = load_resumed_config(base, allowed + repeated)
    assert (config.training.epochs, config.training.max_minutes) == (5, 30)
    assert (config.training.early_stopping_patience, config.training.loader_workers) == (2, 1)
    assert config.optimizer.lr == 0.002  # the run's own value, repeated: accepted
    assert load_resumed_config(base).resolved() == base


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("optimizer.lr=1e-4", "optimizer.lr cannot change when resuming (this run has "
         "optimizer.lr=0.002); a resumed run continues as configured and only training.epochs, "
         "training.max_minutes, training.early_stopping_patience, training.loader_workers may "
         "change"),
        ("optimizer.name=sgd", "optimizer.name cannot change"),
        ("model.backbone=resnet50", "model.backbone cannot change"),
        ("model.detections_per_chip=100", "model.detections_per_chip cannot change"),
        ("schedule.step_size=2", "schedule.step_size cannot change"),
        ("schedule.warmup_steps=10", "schedule.warmup_steps cannot change"),
        ("augmentation.enabled=false", "augmentation.enabled cannot change"),
        ("training.batch_size=2", "training.batch_size cannot change when resuming (this run has "
         "training.batch_size=4)"),
        ("training.seed=1", "training.seed cannot change"),
        ("bands=[a, b, c, d]", "bands cannot change when resuming (this run has bands=null)"),
    ],
)  # fmt: skip
def test_a_resumed_run_refuses_the_rest_by_name(override: str, message: str) -> None:
    base = _run_config("optimizer.lr=0.002", "training.batch_size=4")
    with pytest.raises(ConfigError) as caught:
        load_resumed_config(base, ["training.epochs=5", override])
    assert str(caught.value).startswith(f"--resume: {message}"), str(caught.value)
    with pytest.raises(ConfigError, match=r"training\.epoch: Extra inputs"):  # typos as ever
        load_resumed_config(base, ["training.epoch=5"])


def test_a_cosine_schedule_keeps_its_length_when_resumed() -> None:
    """The restored scheduler keeps the T_max it was built with: new epochs would not fit it."""
    base = _run_config("schedule.name=cosine", "training.epochs=4")
    with pytest.raises(ConfigError, match=r"training\.epochs cannot change in a run with the "
                       r"cosine schedule \(this run has training\.epochs=4\)"):  # fmt: skip
        load_resumed_config(base, ["training.epochs=8"])
    config = load_resumed_config(base, ["training.epochs=4", "training.max_minutes=5"])
    assert (config.training.epochs, config.training.max_minutes) == (4, 5)


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
