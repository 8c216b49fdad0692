"""Benchmark ``fieldseg predict`` throughput (chips/s, km2/s) and peak memory as scenes grow.

The predictor streams: it reads one row of chips at a time and writes fields as they are
finished, so its peak memory should depend on the scene width and the chip size, not on how
many chips the scene has; the target is a peak RSS that stays flat (4096 / 2048 close to 1.0).

The model is an untrained Mask R-CNN of the light CPU config (``maskrcnn_r18_cpu.yaml``), built
with a fixed seed for the synthetic scenes' bands (plausible uint16 reflectance statistics) and
saved once per run as a checkpoint in the workdir; each scene is then predicted from that
checkpoint path exactly as a user would, with the predictor's defaults (chips of 256 px with
64 px overlap from the checkpoint, score threshold 0.5). An untrained model finds few or many
random "fields": these figures measure throughput and memory, not quality. The fields written
are printed because their number drives the resolve, stitch, trace and write costs.

Every scene size runs in a fresh process so that sizes do not share a peak; a baseline process
that only imports fieldseg and torch and builds the model shows the fixed part, so the cost of
streaming a scene is the difference. Synthetic scenes (seed 7, 10 m pixels) are cached in
benchmark-output/. Prints figures and, last, one JSON line.

    .venv/bin/python benchmarks/predict.py [--full] [--device auto] [--workdir benchmark-output]

On two CPU cores the 4096 px scene (441 chips) takes minutes with the untrained ResNet-18.
"""

# Only the standard library is imported at module level, and the heavy imports (torch,
# fieldseg) happen inside the functions that the child processes run. On Linux a child's
# ru_maxrss starts from its launcher's resident memory when it execs (the high-water mark is
# kept across exec), so a launcher holding torch or a synthesised scene would raise every
# child's measured peak; the launcher therefore stays a small, plain Python process.

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from process_memory import hwm_mb, peak_rss_mb

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONFIG_NAME = "maskrcnn_r18_cpu.yaml"
SEED, BANDS, DATES, CHIP_SIZE = 7, 4, 2, 256
#: Plausible uint16 reflectance statistics for every band (the synthetic scenes' range).
P2, P98, MEAN, STD, N_PIXELS = 300.0, 4000.0, 1500.0, 800.0, 1_000_000
SIZES, FULL_SIZE = (2048, 4096), 8192
PARTS = ("read", "model", "resolve", "stitch", "trace", "write")


def checkpoint_path(workdir: Path) -> Path:
    """The untrained model's checkpoint (rewritten by every run, so it matches the code)."""
    return workdir / "predict_maskrcnn_r18_untrained.pt"


def scene_files(workdir: Path, size: int) -> tuple[Path, Path]:
    """The cached synthetic scene of ``size`` px and its truth fields."""
    return (workdir / f"predict_scene_{size}_s{SEED}.tif",
            workdir / f"predict_fields_{size}_s{SEED}.gpkg")  # fmt: skip


# -- child processes ------------------------------------------------------------------------


def prepare(sizes: list[int], workdir: Path) -> dict[str, Any]:
    """Write the untrained checkpoint and any missing scene (in a child: see the top comment)."""
    import torch

    from fieldseg.band_statistics import BandStatistics
    from fieldseg.checkpoint import save_checkpoint
    from fieldseg.models import ModelSpec, build_model, model_config
    from fieldseg.run_config import load_run_config
    from fieldseg.synthetic import band_names_for, synth

    bands = band_names_for(bands=BANDS, dates=DATES)
    spec = ModelSpec(
        bands=bands,
        statistics=tuple(
            BandStatistics(name=name, p2=P2, p98=P98, mean=MEAN, std=STD, n_pixels=N_PIXELS)
            for name in bands
        ),
        nodata=None,
        chip_size=CHIP_SIZE,
        categories=("field",),
    )
    config = load_run_config(CONFIGS / CONFIG_NAME)
    torch.manual_seed(0)
    model = build_model(model_config(config.model), spec)
    save_checkpoint(checkpoint_path(workdir), model, config=config.resolved(), spec=spec,
                    epoch=0, metrics={}, training_state=None)  # fmt: skip
    synth_seconds = {}
    for size in sizes:
        scene, fields = scene_files(workdir, size)
        if not (scene.exists() and fields.exists()):
            tick = time.perf_counter()
            synth(scene, fields, size=size, seed=SEED, overwrite=True)
            synth_seconds[str(size)] = round(time.perf_counter() - tick, 1)
    return {"synth_seconds": synth_seconds}


def baseline(args: argparse.Namespace) -> dict[str, Any]:
    """Peak RSS of importing what the predictor imports and building the model, on the device."""
    import torch

    import fieldseg.inference  # noqa: F401  (the predictor's imports: same fixed cost)
    from fieldseg.checkpoint import load_checkpoint
    from fieldseg.devices import select_device

    device = select_device(args.device)
    model = load_checkpoint(checkpoint_path(args.workdir)).build_model().to(device)
    parameters = sum(p.numel() for p in model.parameters())
    return {
        "device": str(device),
        "threads": torch.get_num_threads(),
        "parameters": parameters,
        "peak_rss_mb": peak_rss_mb(),
        "vm_hwm_mb": hwm_mb(),
    }


def predict_one(size: int, args: argparse.Namespace) -> dict[str, Any]:
    """Predict the ``size`` px scene from the checkpoint path; figures and this process's peak."""
    import torch

    from fieldseg.devices import select_device
    from fieldseg.inference import predict_scene

    scene, _ = scene_files(args.workdir, size)
    output = args.workdir / f"predict_fields_out_{size}.gpkg"
    summary = predict_scene(scene, checkpoint_path(args.workdir), output, overwrite=True,
                            show_progress=False, device=args.device)  # fmt: skip
    seconds = summary.seconds
    total = seconds["total"]
    return {
        "size": size,
        "device": str(select_device(args.device)),
        "threads": torch.get_num_threads(),
        "seconds": total,
        "seconds_parts": {
            **{part: seconds[part] for part in PARTS},
            # model loading, the scene statistics check, opening and closing files
            "other": round(total - sum(seconds[part] for part in PARTS), 3),
        },
        "n_chips": summary.n_chips,
        "n_chips_skipped": summary.n_chips_skipped,
        "chips_per_s": round(summary.n_chips / total, 3),
        "km2": round(summary.area_km2, 2),
        "km2_per_s": round(summary.area_km2 / total, 3),
        "n_fields": summary.n_fields,
        "peak_rss_mb": peak_rss_mb(),
        "vm_hwm_mb": hwm_mb(),
    }


# -- launcher -------------------------------------------------------------------------------


def run_child(mode: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Run this script in a fresh process in ``mode``; its last stdout line is its JSON."""
    command = [sys.executable, str(Path(__file__).resolve()), *mode,
               "--device", args.device, "--workdir", str(args.workdir)]  # fmt: skip
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    lines = done.stdout.strip().splitlines()
    for line in lines[:-1]:
        print(line)
    return json.loads(lines[-1])


def print_size(r: dict[str, Any], base_mb: float) -> None:
    """The figures of one scene size."""
    parts = ", ".join(f"{k} {v:.1f}" for k, v in r["seconds_parts"].items())
    print(
        f"{r['size']} px: {r['seconds']:.1f} s ({parts}); {r['n_chips']} chips "
        f"({r['n_chips_skipped']} without data), {r['chips_per_s']:.2f} chips/s; "
        f"{r['km2']:.0f} km2, {r['km2_per_s']:.2f} km2/s; {r['n_fields']} fields written; "
        f"peak RSS {r['peak_rss_mb']:.0f} MB (+{r['peak_rss_mb'] - base_mb:.0f} over baseline)",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help=f"add the {FULL_SIZE} px scene")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workdir", type=Path, default=Path("benchmark-output"))
    # the child processes' modes (internal)
    parser.add_argument("--prepare", type=str, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.prepare is not None:
        print(json.dumps(prepare([int(s) for s in args.prepare.split(",")], args.workdir)))
        return
    if args.baseline:
        print(json.dumps(baseline(args)))
        return
    if args.one is not None:
        print(json.dumps(predict_one(args.one, args)))
        return

    args.workdir.mkdir(exist_ok=True)
    sizes = [*SIZES, FULL_SIZE] if args.full else list(SIZES)
    prepared = run_child(["--prepare", ",".join(map(str, sizes))], args)
    for size, seconds in prepared["synth_seconds"].items():
        print(f"synthesised the {size} px scene in {seconds:.1f} s (cached from now on)")
    base = run_child(["--baseline"], args)
    print(
        f"baseline (imports + {CONFIG_NAME} model, {base['parameters'] / 1e6:.1f} M parameters, "
        f"{base['device']}, {base['threads']} threads): peak RSS {base['peak_rss_mb']:.0f} MB",
        flush=True,
    )
    results = []
    for size in sizes:
        results.append(run_child(["--one", str(size)], args))
        print_size(results[-1], base["peak_rss_mb"])
    first = results[0]
    ratios = {
        f"{r['size']}_over_{first['size']}": round(r["peak_rss_mb"] / first["peak_rss_mb"], 3)
        for r in results[1:]
    }
    print(
        "peak RSS ratio (flat = 1.0): "
        + ", ".join(f"{key.replace('_over_', ' / ')} {ratio:.3f}" for key, ratio in ratios.items())
    )
    hwm_gaps = [
        r["size"]
        for r in results
        if r["vm_hwm_mb"] is not None and abs(r["vm_hwm_mb"] - r["peak_rss_mb"]) > 1
    ]
    if hwm_gaps:
        print(f"note: ru_maxrss and VmHWM differ at sizes {hwm_gaps} (launcher memory inherited?)")
    print(json.dumps({
        "benchmark": "predict",
        "config": CONFIG_NAME,
        "model": "untrained (seed 0): throughput and memory only",
        "device": base["device"],
        "threads": base["threads"],
        "chip_size": CHIP_SIZE,
        "scene_seed": SEED,
        "baseline_peak_rss_mb": base["peak_rss_mb"],
        "launcher_peak_rss_mb": peak_rss_mb(),
        "sizes": {
            str(r["size"]): {
                **{k: v for k, v in r.items() if k not in ("size", "device", "threads")},
                "rss_over_baseline_mb": round(r["peak_rss_mb"] - base["peak_rss_mb"], 1),
            }
            for r in results
        },
        "peak_rss_ratio": ratios,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
