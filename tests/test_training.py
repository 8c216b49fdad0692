"""`fieldseg train` end to end on a tiny synthetic dataset, on the CPU."""

from __future__ import annotations

import json
import re
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
from fieldseg.training import TrainingError, _improves, _stalled, train

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
    assert raw["pixel_size_m"] == pytest.approx(10.0, rel=0.002)  # the scene's 10 m pixels
    assert raw["dtype"] == "uint16"
    from fieldseg.training import _dataset_hash

    assert raw["training_state"]["dataset"] == _dataset_hash(tiny_dataset)
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
    halving = ["schedule.name=step", "schedule.step_size=1", "schedule.gamma=0.5",
               "schedule.warmup_steps=0"]  # fmt: skip
    train(
        tiny_dataset, config, run_dir,
        overrides=["training.batch_size=4", "training.epochs=1", *halving],
    )  # fmt: skip
    # a best epoch chosen by another metric (a run of an older version) is not compared with
    raw = torch.load(run_dir / "last.pt", weights_only=True)
    raw["training_state"].update(best=[1, 99.0], selection_metric="something_else")
    raw["training_state"]["history"][0]["seconds"] = 1000.0  # as if epoch 1 took that long
    torch.save(raw, run_dir / "last.pt")
    summary = train(tiny_dataset, None, run_dir, resume=True, overrides=["training.epochs=2"])
    assert summary.epochs_done == 2 and summary.best_epoch == 2
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2]
    assert [r["lr"] for r in records] == pytest.approx([1e-3, 5e-4])  # the rate each trained with
    assert records[0]["seconds"] == 1000.0 < records[1]["seconds"]  # counted on from epoch 1
    assert load_checkpoint(run_dir / "last.pt").epoch == 2


def test_resuming_on_another_dataset_warns(caplog: pytest.LogCaptureFixture) -> None:
    from fieldseg.training import _warn_if_other_dataset

    state = {"dataset": "aaaa", "best": [3, 0.5]}
    _warn_if_other_dataset(state, "aaaa", "ds")
    _warn_if_other_dataset({"best": [3, 0.5]}, "bbbb", "ds")  # an older run: no hash to compare
    assert caplog.text == ""
    _warn_if_other_dataset(state, "bbbb", "ds2")
    assert "--resume on ds2, another dataset than this run trained on so far" in caplog.text
    assert "its best epoch, 3, was chosen on the other dataset's val split" in caplog.text


def test_overrides_may_be_a_mapping_or_one_string() -> None:
    from fieldseg.training import _override_strings

    mapping = {"training.epochs": 3, "optimizer.name": "sgd", "x.y": [1, 2], "a.b": True,
               "c.d": None}  # fmt: skip
    expected = ["training.epochs=3", 'optimizer.name="sgd"', "x.y=[1, 2]", "a.b=true", "c.d=null"]
    assert _override_strings(mapping) == expected
    assert _override_strings("training.epochs=3") == ["training.epochs=3"]
    assert _override_strings(("a.b=1", "c.d=2")) == ["a.b=1", "c.d=2"]


@pytest.mark.slow
def test_a_config_mapping_trains_like_its_file(tiny_dataset: Path, tmp_path: Path) -> None:
    """From a script or notebook: the config's sections as a dict, overrides as a dict."""
    config = yaml.safe_load((CONFIG.parent / "yolact_r18_cpu.yaml").read_text())
    summary = train(tiny_dataset, config, tmp_path / "run",
                    overrides={"training.epochs": 1, "training.batch_size": 4})  # fmt: skip
    assert summary.epochs_done == 1
    resolved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert resolved["model"]["family"] == "yolact" and resolved["training"]["batch_size"] == 4
    with pytest.raises(ConfigError, match="-c cannot be used with --resume"):
        train(tiny_dataset, config, tmp_path / "run", resume=True)


def test_undefined_metrics_are_null_in_the_json_lines(tmp_path: Path) -> None:
    from fieldseg.training import _log_metrics

    _log_metrics(tmp_path, [{"epoch": 1, "val_segm_mAP": float("nan"), "val_n_images": 0}])
    (line,) = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert json.loads(line) == {"epoch": 1, "val_segm_mAP": None, "val_n_images": 0}
    assert "NaN" not in line and "nan" in (tmp_path / "metrics.csv").read_text()


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


def test_a_nan_loss_in_the_first_epoch_says_there_is_no_checkpoint(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def nan_losses(self: object, images: object, targets: object) -> dict[str, torch.Tensor]:
        return {"loss_mask": torch.tensor(float("nan"), requires_grad=True)}

    monkeypatch.setattr(MaskRCNNFieldModel, "training_step", nan_losses)
    with pytest.raises(TrainingError, match="before any epoch finished, so there is no checkpoint"):
        train(tiny_dataset, CONFIG, tmp_path / "run", overrides=[*FAST, "training.epochs=1"])
    assert not (tmp_path / "run" / "last.pt").exists()


def test_weights_that_diverge_unseen_are_never_saved(
    tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A last step can leave NaN weights behind a finite loss; that epoch is not saved (a NaN
    model would otherwise validate to nothing and be kept as best.pt)."""
    run_dir = tmp_path / "run"
    train(tiny_dataset, CONFIG, run_dir, overrides=[*FAST, "training.epochs=1"])

    def poisoning(self: MaskRCNNFieldModel, images: object, targets: object) -> dict:
        with torch.no_grad():
            next(self.parameters()).fill_(float("nan"))
        return {"loss_mask": torch.tensor(1.0, requires_grad=True)}

    monkeypatch.setattr(MaskRCNNFieldModel, "training_step", poisoning)
    with pytest.raises(TrainingError, match=r"weights became NaN or infinite in epoch 2.*last\.pt"):
        train(tiny_dataset, None, run_dir, resume=True, overrides=["training.epochs=2"])
    kept = load_checkpoint(run_dir / "last.pt")  # loads: its weights are finite
    assert kept.epoch == 1
    # a checkpoint that does hold NaN weights (an older fieldseg's diverged run) is refused
    data = torch.load(run_dir / "best.pt", weights_only=True)
    name = next(iter(data["state_dict"]))
    data["state_dict"][name] = torch.full_like(data["state_dict"][name], float("nan"))
    torch.save(data, tmp_path / "nan.pt")
    with pytest.raises(
        InputFileError,
        match=rf"nan\.pt holds NaN or infinite weights \(1 tensors, e\.g\. {name}\): its train",
    ):
        load_checkpoint(tmp_path / "nan.pt")


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


# --------------------------------------------------------------------------------------------
# resume, run folders and checkpoints: the trainer's decisions, with the epochs stubbed out
# (each "epoch" steps the optimiser once with no gradients, so the weights stay as built)
# --------------------------------------------------------------------------------------------
@pytest.fixture
def stub_epochs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Replace training and validation by instant stand-ins; the list records the epochs run."""
    import fieldseg.training as training

    epochs: list[int] = []

    def train_epoch(model, loader, optimizer, scaler, device, config, epoch, *rest):  # type: ignore[no-untyped-def]
        optimizer.step()
        epochs.append(epoch)
        return {"loss": 1.0}, False

    monkeypatch.setattr(training, "_train_epoch", train_epoch)
    monkeypatch.setattr(training, "_validate", lambda model, data, config: {"segm_mAP": 0.5})
    return epochs


def _records(run_dir: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_refuses_settings_it_would_not_use(
    tiny_dataset: Path, tmp_path: Path, stub_epochs: list[int]
) -> None:
    """The optimiser state restored from last.pt carries its own lr: a new one is refused
    rather than recorded; what says when the run stops takes effect."""
    run_dir = tmp_path / "run"
    train(tiny_dataset, CONFIG, run_dir, overrides=["optimizer.lr=0.002", "training.epochs=1"])
    config_before = (run_dir / "config.yaml").read_text()
    last_before = (run_dir / "last.pt").read_bytes()
    for override, key in [("optimizer.lr=1e-4", "optimizer.lr"),
                          ("model.backbone=resnet50", "model.backbone"),
                          ("schedule.gamma=0.5", "schedule.gamma"),
                          ("augmentation.enabled=false", "augmentation.enabled"),
                          ("training.batch_size=2", "training.batch_size")]:  # fmt: skip
        with pytest.raises(ConfigError, match=rf"--resume: {key} cannot change when resuming"):
            train(tiny_dataset, None, run_dir, resume=True,
                  overrides=[override, "training.epochs=3"])  # fmt: skip
    with pytest.raises(ConfigError, match=r"-c cannot be used with --resume"):
        train(tiny_dataset, CONFIG, run_dir, resume=True)
    with pytest.raises(ConfigError, match=r"--weights cannot be used with --resume"):
        train(tiny_dataset, None, run_dir, resume=True, weights=tmp_path / "w.pt")
    with pytest.raises(ConfigError, match=r"--pretrained cannot be used with --resume"):
        train(tiny_dataset, None, run_dir, resume=True, pretrained="imagenet")
    # nothing refused was recorded, and nothing ran
    assert (run_dir / "config.yaml").read_text() == config_before
    assert (run_dir / "last.pt").read_bytes() == last_before
    assert stub_epochs == [1]

    # the run's own lr (repeated, so unchanged) and a new stopping rule: both used and recorded
    summary = train(tiny_dataset, None, run_dir, resume=True,
                    overrides=["training.epochs=3", "optimizer.lr=0.002",
                               "training.early_stopping_patience=1"])  # fmt: skip
    # val segm_mAP is 0.5 every epoch: not better at epoch 2, so the new patience stops it
    assert stub_epochs == [1, 2] and summary.epochs_done == 2
    assert summary.stopped_because == "no better val segm_mAP for 1 epochs"
    assert [r["lr"] for r in _records(run_dir)] == [0.002, 0.002]
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert recorded["optimizer"]["lr"] == 0.002 and recorded["training"]["epochs"] == 3
    assert recorded["training"]["early_stopping_patience"] == 1
    assert load_checkpoint(run_dir / "last.pt").config == recorded


def test_a_run_stopped_before_its_first_checkpoint_is_reused(
    tiny_dataset: Path, tmp_path: Path, stub_epochs: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fieldseg.training as training

    run_dir = tmp_path / "run"

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(training, "_train_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_dataset, CONFIG, run_dir, overrides=["training.epochs=1"])
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.yaml"]
    with pytest.raises(InputFileError, match=r"stopped before its first epoch was saved; start it"):
        train(tiny_dataset, None, run_dir, resume=True)
    (run_dir / "metrics.jsonl").write_text("")  # stopped between the metrics and last.pt
    summary = train(tiny_dataset, CONFIG, run_dir, overrides=["training.epochs=1"])
    assert summary.epochs_done == 1 and (run_dir / "last.pt").is_file()

    # a folder with a checkpoint, or with files train does not write, is still refused
    with pytest.raises(OutputExistsError, match=r"not empty; pass --resume"):
        train(tiny_dataset, CONFIG, run_dir, overrides=["training.epochs=1"])
    other = tmp_path / "other"
    other.mkdir()
    (other / "config.yaml").write_text("model: {family: maskrcnn}\n")
    (other / "notes.txt").write_text("mine")
    with pytest.raises(OutputExistsError, match=r"not empty; pass --resume"):
        train(tiny_dataset, CONFIG, other, overrides=["training.epochs=1"])
    assert sorted(p.name for p in other.iterdir()) == ["config.yaml", "notes.txt"]
    (other / "notes.txt").unlink()  # a config of one's own, not one train resolved and wrote
    with pytest.raises(OutputExistsError, match=r"not empty; pass --resume"):
        train(tiny_dataset, CONFIG, other, overrides=["training.epochs=1"])
    assert (other / "config.yaml").read_text() == "model: {family: maskrcnn}\n"


def test_overwrite_keeps_the_earlier_run_until_the_new_one_has_saved_an_epoch(
    tiny_dataset: Path, tmp_path: Path, stub_epochs: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    import fieldseg.training as training

    run_dir = tmp_path / "run"
    train(tiny_dataset, CONFIG, run_dir, overrides=["training.epochs=1"])
    before = {p.name: p.read_bytes() for p in run_dir.iterdir()}
    assert {"last.pt", "best.pt", "config.yaml"} <= set(before)

    def interrupted(*args: object) -> None:
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # Ctrl-C in the new run's first epoch
        patch.setattr(training, "_train_epoch", interrupted)
        with pytest.raises(KeyboardInterrupt):
            train(tiny_dataset, CONFIG, run_dir, overwrite=True,
                  overrides=["training.epochs=2", "training.seed=5"])  # fmt: skip
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before

    # killed (SIGKILL) while the earlier run's files waited aside: the next start puts them back
    aside = run_dir / training.PREVIOUS_RUN
    aside.mkdir()
    for name in before:
        (run_dir / name).rename(aside / name)
    (run_dir / "config.yaml").write_text("model: {family: maskrcnn}\n")
    with pytest.raises(OutputExistsError, match=r"not empty; pass --resume"):
        train(tiny_dataset, CONFIG, run_dir, overrides=["training.epochs=1"])
    assert {p.name: p.read_bytes() for p in run_dir.iterdir()} == before

    summary = train(tiny_dataset, CONFIG, run_dir, overwrite=True, overrides=["training.epochs=2"])
    assert summary.epochs_done == 2 and not aside.exists()
    assert (run_dir / "last.pt").read_bytes() != before["last.pt"]


def test_unusable_run_folders_are_output_path_errors(tiny_dataset: Path, tmp_path: Path) -> None:
    from fieldseg.atomic_output import OutputPathError

    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"II*\x00")
    with pytest.raises(OutputPathError, match=r"^run folder .*scene\.tif is a file; -o names a"):
        train(tiny_dataset, CONFIG, scene)
    with pytest.raises(OutputPathError, match=r"^--resume: run folder .*scene\.tif is a file"):
        train(tiny_dataset, None, scene, resume=True)
    with pytest.raises(
        OutputPathError, match=r"cannot write the run folder .*x: Not a directory \(.*scene\.tif is"
    ):
        train(tiny_dataset, CONFIG, scene / "x", overrides=["training.epochs=1"])
    if Path("/proc/self").is_dir():  # Linux: nothing can be made in /proc
        with pytest.raises(OutputPathError, match=r"run folder /proc/run: No such file"):
            train(tiny_dataset, CONFIG, "/proc/run", overrides=["training.epochs=1"])
    assert scene.read_bytes() == b"II*\x00"


def test_a_file_that_is_not_a_checkpoint_is_one_clear_line(tmp_path: Path) -> None:
    """Never PyTorch's many lines advising weights_only=False (which would let it run code)."""
    from argparse import Namespace

    (tmp_path / "scene.tif").write_bytes(b"II*\x00\x08\x00\x00\x00\xff\xfe")
    (tmp_path / "config.yaml").write_text("model:\n  family: maskrcnn\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save({"object": Namespace()}, tmp_path / "object.pt")
    cases = {"scene.tif": "", "config.yaml": "", "empty.pt": ": the file is empty",
             "object.pt": ": it holds a Python object, "}  # fmt: skip
    for name, reason in cases.items():
        with pytest.raises(InputFileError) as caught:
            load_checkpoint(tmp_path / name)
        message = str(caught.value)
        assert message.startswith(
            f"{tmp_path / name} is not a fieldseg checkpoint (PyTorch could not read it as one"
            + reason
        ), message
        assert "\n" not in message and "weights_only" not in message, message


def test_damaged_checkpoints_are_refused_naming_the_part(
    tiny_dataset: Path, tmp_path: Path, stub_epochs: list[int]
) -> None:
    """Checkpoints edited by hand, cut short or from another fieldseg: one clear line each."""
    train(tiny_dataset, CONFIG, tmp_path / "run", overrides=["training.epochs=1"])
    good = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    name = next(iter(good["state_dict"]))
    scene = next(tiny_dataset.rglob("*.tif"))

    def edited(**changes: object) -> dict:
        return {**good, **changes}

    cases = {
        "no_statistics": (
            {k: v for k, v in good.items() if k != "statistics"},
            "is damaged: it lacks statistics",
        ),
        "short_bands": (edited(bands=good["bands"][:1]), "is damaged: it names 1 bands but holds"),
        "version_text": (edited(format_version="1"), "is damaged: its format_version is '1'"),
        "other_family": (edited(family="yolact"), "it says family 'yolact', its config 'maskrcnn'"),
        "missing_weight": (
            edited(state_dict={k: v for k, v in good["state_dict"].items() if k != name}),
            f"its weights do not fit the maskrcnn model its config describes (1 missing, e.g. "
            f"{name})",
        ),
    }
    for case, (data, message) in cases.items():
        torch.save(data, tmp_path / f"{case}.pt")
        with pytest.raises(InputFileError, match=re.escape(message)):
            load_checkpoint(tmp_path / f"{case}.pt").build_model()
        result = run("predict", scene, "-m", tmp_path / f"{case}.pt", "-o", tmp_path / "x.gpkg")
        assert_user_error(result, message)


def test_loader_workers_draw_new_augmentations_every_epoch(tmp_path: Path) -> None:
    """Each epoch's chips through two workers are the dataset's own for that epoch (a kept
    worker's copy of the dataset would repeat the first epoch's flips)."""
    from fieldseg.augmentation import ChipAugmentation
    from fieldseg.dataset_description import DatasetDescription
    from fieldseg.run_config import load_run_config
    from fieldseg.training import train_loader

    dataset = make_tiny_dataset(tmp_path)
    config = load_run_config(CPU_CONFIG)
    bands = DatasetDescription.load(dataset).bands
    data = ChipDataset(dataset, "train", seed=3,
                       augmentation=ChipAugmentation(config.augmentation, bands))  # fmt: skip
    loader = train_loader(data, batch_size=2, workers=2, sampler=None,
                          generator=torch.Generator().manual_seed(0), pin_memory=False)  # fmt: skip
    seen = []
    for epoch in (1, 2):
        data.set_epoch(epoch)
        chips = {}
        for images, targets in loader:
            for image, target in zip(images, targets, strict=True):
                chips[target["image_id"]] = image
        ids = {int(data.images[i]["id"]): i for i in range(len(data))}
        for image_id, image in chips.items():
            assert torch.equal(image, data[ids[image_id]][0])  # the main process's draw
        seen.append(chips)
    assert any(not torch.equal(seen[0][k], seen[1][k]) for k in seen[0])


def test_drawing_the_curves_leaves_the_callers_plotting_backend_alone(tmp_path: Path) -> None:
    """A notebook's inline backend must survive train(): no matplotlib.use, no pyplot."""
    import matplotlib

    from fieldseg.training_curves import plot_training_curves

    backend = matplotlib.get_backend()
    history = [{"epoch": 1, "train_loss": 1.0, "val_segm_mAP": 0.2},
               {"epoch": 2, "train_loss": 0.5, "val_segm_mAP": 0.3}]  # fmt: skip
    plot_training_curves(history, tmp_path / "curves.png")
    assert matplotlib.get_backend() == backend
    from PIL import Image

    with Image.open(tmp_path / "curves.png") as curves:
        assert curves.size == (1100, 400)


def test_a_model_that_finds_nothing_yet_is_neither_best_for_being_early_nor_stalled() -> None:
    best = None
    for epoch, metric in enumerate([0.0, 0.0, 0.0, 0.0], start=1):
        if _improves(metric, best):
            best = (epoch, metric)
        assert not _stalled(epoch, best, patience=1)
    assert best == (4, 0.0)  # the latest of the epochs tied at zero
    assert _improves(0.2, best) and not _improves(0.2, (5, 0.2)) and not _improves(None, best)
    assert not _improves(float("nan"), None)
    assert _stalled(7, (5, 0.2), patience=2) and not _stalled(6, (5, 0.2), patience=2)
