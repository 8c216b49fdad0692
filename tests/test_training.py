"""`fieldseg train` end to end on a tiny synthetic dataset, on the CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CPU_CONFIG, FAST_TRAINING, assert_user_error, make_tiny_dataset, run

from fieldseg.checkpoint import load_checkpoint
from fieldseg.chip_dataset import ChipDataset
from fieldseg.devices import select_device
from fieldseg.errors import ConfigError, InputFileError, OutputExistsError
from fieldseg.models.maskrcnn import MaskRCNNFieldModel
from fieldseg.training import TrainingError, train

CONFIG = CPU_CONFIG
FAST = list(FAST_TRAINING)


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.mark.slow
def test_a_run_writes_checkpoints_metrics_and_config(tiny_dataset: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    summary = train(tiny_dataset, CONFIG, run_dir, overrides=[*FAST, "training.epochs=2"])
    assert summary.epochs_done == 2 and summary.stopped_because == "epochs done"
    assert summary.metric_name == "segm_mAP"
    assert sorted(p.name for p in run_dir.iterdir()) == [
        "best.pt", "config.yaml", "last.pt", "metrics.csv", "metrics.jsonl",
        "training_curves.png"]  # fmt: skip
    from PIL import Image

    with Image.open(run_dir / "training_curves.png") as curves:
        assert curves.format == "PNG" and curves.size == (1100, 400)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    for record in records:
        assert 0.0 <= record["val_segm_mAP"] <= 1.0 and record["train_loss"] > 0
        assert {"train_loss_mask", "val_bbox_mAP", "lr"} <= set(record)
    assert (run_dir / "metrics.csv").read_text().splitlines()[0].startswith("epoch,")
    resolved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert resolved["training"]["epochs"] == 2 and resolved["model"]["backbone"] == "resnet18"

    # checkpoints: plain data (weights_only) and everything needed to predict
    raw = torch.load(run_dir / "last.pt", weights_only=True)
    assert raw["format"] == "fieldseg-checkpoint" and raw["family"] == "maskrcnn"
    assert raw["bands"] == ["red_d1", "green_d1", "blue_d1", "nir_d1"]
    assert raw["chip_size"] == 64 and raw["categories"] == ["field"] and raw["epoch"] == 2
    assert len(raw["statistics"]) == 4 and raw["training_state"]["history"] == records

    # a run folder works where a checkpoint is asked for, and reloads to identical predictions
    best = load_checkpoint(run_dir)
    assert best.epoch == summary.best_epoch
    model = best.build_model()
    again = load_checkpoint(run_dir / "best.pt").build_model()
    image, _ = ChipDataset(tiny_dataset, "val")[0]
    (one,), (two,) = model.predict([image]), again.predict([image])
    assert torch.equal(one.scores, two.scores)
    assert torch.equal(one.dense_masks(), two.dense_masks())


@pytest.mark.slow
def test_resume_continues_the_epoch_count(tiny_dataset: Path, tmp_path: Path) -> None:
    """Resumed with the YOLACT CPU config: the trainer is the same for every family, and this
    one trains fastest per step."""
    run_dir = tmp_path / "run"
    config = CONFIG.parent / "yolact_r18_cpu.yaml"
    train(tiny_dataset, config, run_dir, overrides=["training.batch_size=4", "training.epochs=1"])
    # a best epoch chosen by another metric (a run of an older version) is not compared with
    raw = torch.load(run_dir / "last.pt", weights_only=True)
    raw["training_state"].update(best=[1, 99.0], selection_metric="something_else")
    torch.save(raw, run_dir / "last.pt")
    summary = train(tiny_dataset, None, run_dir, resume=True, overrides=["training.epochs=2"])
    assert summary.epochs_done == 2 and summary.best_epoch == 2
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert load_checkpoint(run_dir / "last.pt").epoch == 2


@pytest.mark.slow
def test_a_nan_loss_stops_and_keeps_the_last_good_checkpoint(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run_dir = tmp_path / "run"
    train(tiny_dataset, CONFIG, run_dir, overrides=[*FAST, "training.epochs=1"])

    def nan_losses(self: object, images: object, targets: object) -> dict[str, torch.Tensor]:
        return {"loss_mask": torch.tensor(float("nan"), requires_grad=True)}

    monkeypatch.setattr(MaskRCNNFieldModel, "training_step", nan_losses)
    with pytest.raises(TrainingError, match="the loss became nan at epoch 2"):
        train(tiny_dataset, None, run_dir, resume=True, overrides=["training.epochs=2"])
    assert load_checkpoint(run_dir / "last.pt").epoch == 1


def test_bad_runs_are_clear_errors(tiny_dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="not a fieldseg dataset"):
        train(tmp_path, CONFIG, tmp_path / "run")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"--resume .* --overwrite"):
        train(tiny_dataset, CONFIG, tmp_path / "busy")
    with pytest.raises(OutputExistsError, match="not a fieldseg run"):
        train(tiny_dataset, CONFIG, tmp_path / "busy", overwrite=True)
    with pytest.raises(InputFileError, match=r"holds no last\.pt"):
        train(tiny_dataset, None, tmp_path / "fresh", resume=True)
    with pytest.raises(ConfigError, match=r"training\.epochs"):
        train(tiny_dataset, CONFIG, tmp_path / "run", overrides=["training.epochs=0"])
    with pytest.raises(ConfigError, match=r"the config is for bands \['B02', 'B03'\]; the data"):
        train(tiny_dataset, CONFIG, tmp_path / "run", overrides=["bands=[B02, B03]"])
    with pytest.raises(ConfigError, match="resnet50 backbone only"):  # found building the model
        train(tiny_dataset, CONFIG, tmp_path / "run", pretrained="coco")
    assert not (tmp_path / "run").exists()  # no mistake leaves a run folder to block a retry
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="no CUDA device"):
            select_device("cuda")
    assert select_device("cpu").type == "cpu"


def test_cli_help_and_one_line_errors(tiny_dataset: Path, tmp_path: Path) -> None:
    result = run("train", "--help")
    assert result.exit_code == 0
    for option in ("--config", "--output", "--epochs", "--max-minutes", "--device", "--resume",
                   "--pretrained", "--weights", "--set", "--overwrite"):  # fmt: skip
        assert option in result.output
    assert_user_error(
        run("train", tiny_dataset, "-c", CONFIG, "-o", tmp_path / "r", "--set", "training.x=1"),
        "training.x",
    )
