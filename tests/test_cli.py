"""The command line: help and version, stack and tile end to end, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import rasterio
from conftest import (
    BAND_NAMES,
    CHIP,
    CPU_CONFIG,
    FIELDS,
    OVERLAP,
    SceneFixture,
    assert_user_error,
    check_against_truth,
    make_tiny_dataset,
    px_box,
    read_dataset,
    run,
    stderr_of,
    stdout_of,
    write_labels,
    write_scene,
)

import fieldseg
import fieldseg.chip_writer

TILE = ["--chip-size", str(CHIP), "--overlap", str(OVERLAP)]


# --------------------------------------------------------------------------------------------
# help and version
# --------------------------------------------------------------------------------------------
def test_main_help_lists_the_commands() -> None:
    result = run("--help")
    assert result.exit_code == 0
    for command in ("synth", "stack", "tile", "train", "predict", "evaluate"):
        assert command in result.output
    for option in ("--version", "--verbose", "--quiet", "--help"):
        assert option in result.output


def test_version() -> None:
    result = run("--version")
    assert result.exit_code == 0
    assert result.output.strip() == f"fieldseg, version {fieldseg.__version__}"


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (
            "tile",
            [
                "--labels",
                "--output",
                "--chip-size",
                "--overlap",
                "--split",
                "--split-column",
                "--block-size",
                "--class-column",
                "--label-extent",
                "--sparse",
                "--max-nodata",
                "--nodata",
                "--compress",
                "--seed",
                "--overwrite",
            ],
        ),
        ("stack", ["--output", "--band-names", "--overwrite"]),
        ("synth", ["--fields", "--size", "--seed", "--bands", "--dates", "--clouds"]),
        (
            "evaluate",
            [
                "--label-extent",
                "--sparse",
                "--output",
                "--plot",
                "--errors",
                "--iou-threshold",
                "--pixel-size",
                "--boundary-tolerance",
                "--ap-tile",
                "--no-mask-ap",
                "--overwrite",
            ],
        ),
    ],
)
def test_command_help(command: str, options: list[str]) -> None:
    result = run(command, "--help")
    assert result.exit_code == 0, result.output
    assert f"Usage: main {command}" in result.output or f"{command} [OPTIONS]" in result.output
    for option in options:
        assert option in result.output, option


def test_python_dash_m_and_fast_help() -> None:
    """`python -m fieldseg --help` works, without importing the heavy libraries."""
    result = subprocess.run(
        [sys.executable, "-m", "fieldseg", "--help"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "tile" in result.stdout and "stack" in result.stdout
    probe = (
        "import sys; from fieldseg.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('rasterio', 'geopandas', 'torch', 'shapely') if m in sys.modules]\n"
        "print('HEAVY', heavy)"
    )
    probe_run = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60
    )
    assert probe_run.returncode == 0, probe_run.stderr
    assert "HEAVY []" in probe_run.stdout


def test_missing_required_option_is_a_usage_error(tmp_path: Path) -> None:
    result = run("tile", tmp_path / "scene.tif", "-o", tmp_path / "out")
    assert result.exit_code == 2
    assert "Missing option '--labels'" in stderr_of(result)


# --------------------------------------------------------------------------------------------
# stack
# --------------------------------------------------------------------------------------------
@pytest.fixture
def band_files(tmp_path: Path, scene_data: np.ndarray) -> list[Path]:
    folder = tmp_path / "bands"
    folder.mkdir()
    return [
        write_scene(folder / f"t_{name}.tif", scene_data[i : i + 1], band_names=None)
        for i, name in enumerate(BAND_NAMES)
    ]


def test_stack_cli(tmp_path: Path, band_files: list[Path], scene_data: np.ndarray) -> None:
    out = tmp_path / "scene.vrt"
    result = run("stack", *reversed(band_files), "-o", out, "--band-names", "n, r,g,b")
    assert result.exit_code == 0, stderr_of(result)
    assert f"wrote {out}: 4 bands (n, r, g, b)" in stdout_of(result)
    with rasterio.open(out) as src:
        assert src.descriptions == ("n", "r", "g", "b")
        assert np.array_equal(src.read(), scene_data[::-1])


def test_stack_cli_logging_levels(tmp_path: Path, band_files: list[Path]) -> None:
    loud = run("-v", "stack", *band_files, "-o", tmp_path / "a.vrt")
    assert loud.exit_code == 0
    assert "stacked 4 bands from 4 files" in stderr_of(loud)
    for options in ([], ["-q"]):  # the summary line on stdout says it once
        plain = run(*options, "stack", *band_files, "-o", tmp_path / f"b{len(options)}.vrt")
        assert plain.exit_code == 0
        assert "stacked" not in stderr_of(plain) and "wrote" in stdout_of(plain)


def test_stack_cli_errors(tmp_path: Path, band_files: list[Path], scene_data: np.ndarray) -> None:
    odd = write_scene(tmp_path / "bands" / "odd.tif", scene_data[:1, :, :-1], band_names=None)
    assert_user_error(run("stack", *band_files, odd, "-o", tmp_path / "s.vrt"), "odd.tif", "size")
    assert_user_error(run("stack", *band_files, "-o", tmp_path / "s.tif"), "*.vrt")
    assert_user_error(
        run("stack", *band_files, "-o", tmp_path / "s.vrt", "--band-names", "a,b"),
        "2 band names given for 4 bands",
    )
    assert_user_error(
        run("stack", *band_files, tmp_path / "nope.tif", "-o", tmp_path / "s.vrt"),
        "raster not found",
        "nope.tif",
    )
    (tmp_path / "s.vrt").write_text("x")
    assert_user_error(run("stack", *band_files, "-o", tmp_path / "s.vrt"), "--overwrite")
    assert run("stack", *band_files, "-o", tmp_path / "s.vrt", "--overwrite").exit_code == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bands", "s.vrt"]


# --------------------------------------------------------------------------------------------
# tile
# --------------------------------------------------------------------------------------------
def test_tile_cli(tmp_path: Path, basic_scene: SceneFixture) -> None:
    out = tmp_path / "ds"
    result = run(
        "tile", basic_scene.scene, "--labels", basic_scene.labels, "-o", out, *TILE,
        "--split", "1,0,0",
    )  # fmt: skip
    assert result.exit_code == 0, stderr_of(result)
    stdout = stdout_of(result)
    assert f"dataset: {out}" in stdout
    assert "chips written: 9 of 9 candidates: train 9 chips (100.0%, 27 instances)" in stdout
    assert "11 fields kept of 11 read" in stdout
    assert "2 clipped slivers" in stdout or "slivers dropped (and ignored): 2" in stdout
    ds = read_dataset(out)
    assert len(ds.images) == 9
    check_against_truth(ds, basic_scene.truth)


def test_tile_cli_small_splits_warn(tmp_path: Path, basic_scene: SceneFixture) -> None:
    out = tmp_path / "ds"
    result = run(
        "tile", basic_scene.scene, "--labels", basic_scene.labels, "-o", out, *TILE,
        "--block-size", "512",
    )  # fmt: skip
    assert result.exit_code == 0, stderr_of(result)
    assert "the val split got no chips" in stderr_of(result)  # a warning, not a failure
    assert "the test split got no chips" in stderr_of(result)
    assert "Error" not in stderr_of(result)


def test_tile_cli_sparse_and_options(tmp_path: Path, basic_scene: SceneFixture) -> None:
    labels = write_labels(
        tmp_path / "drawn.gpkg",
        [FIELDS["holed"], FIELDS["pentagon"]],
        columns={"crop": ["wheat", "maize"]},
    )
    out = tmp_path / "ds"
    result = run(
        "-q", "tile", basic_scene.scene, "--labels", labels, "-o", out, *TILE, "--sparse",
        "--class-column", "crop", "--split", "1,0,0", "--seed", "3", "--compress", "lzw",
    )  # fmt: skip
    assert result.exit_code == 0, stderr_of(result)
    ds = read_dataset(out)
    assert ds.description["label_mode"] == "sparse"
    assert [c["name"] for c in ds.description["categories"]] == ["maize", "wheat"]
    assert ds.description["split_method"]["seed"] == 3
    check_against_truth(ds, {1: FIELDS["holed"], 2: FIELDS["pentagon"]}, sparse=True)
    with rasterio.open(out / ds.images[0].entry["file_name"]) as src:
        assert src.compression.name.lower() == "lzw"


def test_tile_cli_nodata_option(tmp_path: Path, scene_data: np.ndarray) -> None:
    data = scene_data.copy()
    data[:, :, :200] = 0
    scene = write_scene(tmp_path / "s.tif", data)
    labels = write_labels(tmp_path / "f.gpkg", [FIELDS["holed"], FIELDS["scene_edge"]])
    out = tmp_path / "ds"
    result = run(
        "tile", scene, "--labels", labels, "-o", out, *TILE, "--nodata", "0",
        "--max-nodata", "0.3", "--split", "1,0,0",
    )  # fmt: skip
    assert result.exit_code == 0, stderr_of(result)
    ds = read_dataset(out)
    assert ds.description["nodata"] == 0
    # chips at columns 0 and 96 are > 30 % nodata; only column 172 stays
    assert {im.col_off for im in ds.images} == {172}
    assert "6 too much nodata" in stdout_of(result)


@pytest.fixture
def bad_inputs(tmp_path: Path, scene_data: np.ndarray) -> dict[str, Path]:
    garbage = tmp_path / "garbage.tif"
    garbage.write_bytes(b"\x00\x01garbage" * 200)
    return {
        "garbage": garbage,
        "no_crs": write_scene(tmp_path / "no_crs.tif", scene_data, crs=None),
        "labels_no_crs": write_labels(tmp_path / "l_no_crs.shp", [FIELDS["rect_a"]], crs=None),
        "far": write_labels(tmp_path / "far.gpkg", [px_box(5000, 5000, 5030, 5030)]),
    }


@pytest.mark.parametrize(
    ("case", "fragments"),
    [
        ("missing_scene", ["raster not found", "missing.tif"]),
        ("missing_labels", ["vector file not found", "missing.gpkg"]),
        ("garbage", ["cannot read raster", "garbage.tif"]),
        ("no_crs", ["no_crs.tif has no CRS"]),
        ("labels_no_crs", ["l_no_crs.shp has no CRS"]),
        ("far", ["labels do not overlap the raster"]),
        ("overlap", ["overlap (128) must be smaller than the chip size (128)"]),
        ("class_column", ["--class-column 'crop' is not a column"]),
        ("split_column", ["--split-column 'fold' is not a column"]),
        ("both_modes", ["--label-extent and --sparse are exclusive"]),
        ("bad_split", ["--split expects three"]),
    ],
)
def test_tile_cli_bad_input(
    tmp_path: Path,
    basic_scene: SceneFixture,
    bad_inputs: dict[str, Path],
    case: str,
    fragments: list[str],
) -> None:
    scene, labels = basic_scene.scene, basic_scene.labels
    extra: list[str | Path] = [*TILE]
    if case == "missing_scene":
        scene = tmp_path / "missing.tif"
    elif case == "missing_labels":
        labels = tmp_path / "missing.gpkg"
    elif case in ("garbage", "no_crs"):
        scene = bad_inputs[case]
    elif case in ("labels_no_crs", "far"):
        labels = bad_inputs[case]
    elif case == "overlap":
        extra = ["--chip-size", "128", "--overlap", "128"]
    elif case == "class_column":
        extra += ["--class-column", "crop"]
    elif case == "split_column":
        extra += ["--split-column", "fold"]
    elif case == "both_modes":
        extra += ["--sparse", "--label-extent", labels]
    elif case == "bad_split":
        extra += ["--split", "0.5,0.5"]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run("tile", scene, "--labels", labels, "-o", tmp_path / "out", *extra)
    assert_user_error(result, *fragments)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output, no temp dir


def test_tile_cli_output_exists_and_overwrite(tmp_path: Path, basic_scene: SceneFixture) -> None:
    out = tmp_path / "ds"
    args = ["tile", basic_scene.scene, "--labels", basic_scene.labels, "-o", out, *TILE]
    assert run(*args).exit_code == 0
    (out / "x").write_text("x")
    assert_user_error(run(*args), "not empty", "--overwrite")
    assert (out / "x").exists()
    result = run(*args, "--overwrite")
    assert result.exit_code == 0, stderr_of(result)
    assert not (out / "x").exists() and (out / "dataset.json").exists()


def test_tile_cli_overwrite_never_replaces_a_folder_fieldseg_did_not_write(
    tmp_path: Path, basic_scene: SceneFixture
) -> None:
    out = tmp_path / "precious"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    args = ["tile", basic_scene.scene, "--labels", basic_scene.labels, "-o", out, *TILE]
    assert_user_error(run(*args, "--overwrite"), "holds no dataset.json", "not replaced")
    assert (out / "notes.txt").read_text() == "mine"


def test_tile_cli_refuses_an_output_that_holds_its_inputs(
    tmp_path: Path, basic_scene: SceneFixture
) -> None:
    folder = basic_scene.scene.parent
    before = sorted(p.name for p in folder.iterdir())
    args = ["tile", basic_scene.scene, "--labels", basic_scene.labels, "-o", folder, *TILE]
    assert_user_error(run(*args, "--overwrite"), "would replace the input")
    assert sorted(p.name for p in folder.iterdir()) == before


@pytest.mark.parametrize(
    ("stop", "exit_code", "message"),
    [("ctrl-c", 130, "Interrupted; no half-written file was left behind"),
     ("sigterm", 128 + signal.SIGTERM, "Terminated; no half-written file was left behind")],
)  # fmt: skip
def test_tile_cli_stopped_midway_leaves_nothing(
    tmp_path: Path,
    basic_scene: SceneFixture,
    monkeypatch: pytest.MonkeyPatch,
    listing: Callable[[Path], list[str]],
    stop: str,
    exit_code: int,
    message: str,
) -> None:
    """Ctrl-C, or ``kill`` (a scheduler's time limit), at the fourth chip: the temporary
    folder goes too."""
    real = fieldseg.chip_writer.write_geotiff
    before = signal.getsignal(signal.SIGTERM)
    written: list[int] = []

    def stopped(*args: object, **kwargs: object) -> None:
        if len(written) == 3:
            if stop == "ctrl-c":
                raise KeyboardInterrupt
            # without fieldseg's handler the signal would end pytest itself: fail instead
            handler = signal.getsignal(signal.SIGTERM)
            assert callable(handler) and handler is not before, "no SIGTERM handler is set"
            os.kill(os.getpid(), signal.SIGTERM)
        written.append(1)
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(fieldseg.chip_writer, "write_geotiff", stopped)
    parent = tmp_path / "p"
    parent.mkdir()
    result = run("tile", basic_scene.scene, "--labels", basic_scene.labels, "-o", parent / "o")
    assert result.exit_code == exit_code
    assert message in stderr_of(result)
    assert "--resume" not in stderr_of(result)  # that is for train
    assert "Traceback" not in stderr_of(result)
    assert len(written) == 3 and listing(parent) == []  # stopped at the fourth chip
    assert signal.getsignal(signal.SIGTERM) is before  # the handler is the command's alone


def test_sigterm_is_left_alone_in_the_other_processes_of_a_distributed_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fieldseg.cli import _sigterm_unwinds

    before = signal.getsignal(signal.SIGTERM)
    monkeypatch.setenv("RANK", "1")
    with _sigterm_unwinds():
        assert signal.getsignal(signal.SIGTERM) is before
    monkeypatch.setenv("RANK", "0")
    with _sigterm_unwinds():
        assert callable(signal.getsignal(signal.SIGTERM))
    assert signal.getsignal(signal.SIGTERM) is before


def test_train_cli_ctrl_c_says_how_to_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import fieldseg.training

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(fieldseg.training, "_train_epoch", interrupted)
    dataset = make_tiny_dataset(tmp_path)
    result = run("train", dataset, "-c", CPU_CONFIG, "-o", tmp_path / "run", "--epochs", "1")
    assert result.exit_code == 130
    assert "the same command with --resume goes on" in stderr_of(result)
    assert "Traceback" not in stderr_of(result)


def test_tile_cli_writes_loadable_json(tmp_path: Path, basic_scene: SceneFixture) -> None:
    out = tmp_path / "ds"
    assert (
        run("-q", "tile", basic_scene.scene, "--labels", basic_scene.labels, "-o", out).exit_code
        == 0
    )
    for name in ("dataset.json", "train.json", "val.json", "test.json"):
        json.loads((out / name).read_text())


# --------------------------------------------------------------------------------------------
# train: resume rules and unusable paths, one line each (epochs stubbed out: instant)
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def train_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_dataset(tmp_path_factory.mktemp("train-cli"))


def _one_line_error(result: object, *fragments: str) -> str:
    """``assert_user_error``, and nothing of the message spills onto further lines."""
    line = assert_user_error(result, *fragments)  # type: ignore[arg-type]
    assert stderr_of(result).rstrip().endswith(line), stderr_of(result)  # type: ignore[arg-type]
    return line


def test_train_cli_resume_changes_only_when_the_run_stops(
    tmp_path: Path, train_dataset: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import yaml

    import fieldseg.training

    def train_epoch(model, loader, optimizer, *rest):  # type: ignore[no-untyped-def]
        optimizer.step()
        return {"loss": 1.0}, False

    monkeypatch.setattr(fieldseg.training, "_train_epoch", train_epoch)
    monkeypatch.setattr(fieldseg.training, "_validate", lambda *args: {"segm_mAP": 0.5})
    run_dir = tmp_path / "run"
    first = run("train", train_dataset, "-c", CPU_CONFIG, "-o", run_dir, "--epochs", "1",
                "--set", "optimizer.lr=0.002")  # fmt: skip
    assert first.exit_code == 0, first.output
    resume = ["train", train_dataset, "-o", run_dir, "--resume"]
    _one_line_error(
        run(*resume, "--epochs", "3", "--set", "optimizer.lr=1e-4"),
        "--resume: optimizer.lr cannot change when resuming (this run has optimizer.lr=0.002)",
    )
    _one_line_error(run(*resume, "-c", CPU_CONFIG), "-c cannot be used with --resume")
    assert yaml.safe_load((run_dir / "config.yaml").read_text())["training"]["epochs"] == 1
    resumed = run(*resume, "--epochs", "2", "--max-minutes", "5")
    assert resumed.exit_code == 0, resumed.output
    assert "2 epochs (epochs done)" in stdout_of(resumed)
    assert "training maskrcnn on " in stderr_of(first)  # which family, on what, says the log
    assert "on cpu, epochs 2 to 2, at most 5 minutes" in stderr_of(resumed)
    recorded = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert recorded["training"]["epochs"] == 2 and recorded["training"]["max_minutes"] == 5
    assert recorded["optimizer"]["lr"] == 0.002


def test_train_cli_unusable_config_and_output_paths(tmp_path: Path, train_dataset: Path) -> None:
    scene = tmp_path / "scene.tif"
    scene.write_bytes(b"II*\x00\x08\x00\x00\x00\xff\xfe\x00")
    out = tmp_path / "run"
    _one_line_error(run("train", train_dataset, "-c", scene, "-o", out), "not a text file")
    _one_line_error(run("train", train_dataset, "-c", tmp_path, "-o", out), "is a folder")
    _one_line_error(run("train", train_dataset, "-c", CPU_CONFIG, "-o", scene), "is a file")
    _one_line_error(
        run("train", train_dataset, "-c", CPU_CONFIG, "-o", scene / "x"),
        "Not a directory",
        f"{scene} is a file",
    )
    if Path("/proc/self").is_dir():
        _one_line_error(
            run("train", train_dataset, "-c", CPU_CONFIG, "-o", "/proc/run"),
            "cannot write the run folder /proc/run: No such file or directory",
        )
    if Path("/sys/kernel").is_dir():
        _one_line_error(
            run("train", train_dataset, "-c", CPU_CONFIG, "-o", "/sys/run"),
            "cannot write the run folder /sys/run: ",
        )
    assert not out.exists()
