"""Benchmark `fieldseg tile` against a bare rasterio windowed read of the same windows.

Synthesises a 4096 x 4096 4-band scene (once, cached in benchmark-output/), tiles it with fast
chip compression, and reads the same chip windows with bare rasterio. Prints figures and, last,
one JSON line. Target: tiling takes at most 3x the bare read.

    .venv/bin/python benchmarks/tile.py [--size 4096] [--compress zstd] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import rasterio

from fieldseg.chip_grid import chip_windows
from fieldseg.synthetic import synthesize_scene, write_synthetic_scene
from fieldseg.tiling import default_workers, tile_scenes


def bare_read(scene: Path, chip_size: int, overlap: int) -> tuple[float, int]:
    """Seconds to read every chip window with plain rasterio, and the number of windows."""
    start = time.perf_counter()
    with rasterio.open(scene) as src:
        windows = chip_windows(src.width, src.height, chip_size, overlap)
        for window in windows:
            src.read(window=window)
    return time.perf_counter() - start, len(windows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--chip-size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=64)
    parser.add_argument("--compress", default="zstd")
    parser.add_argument("--repeat", type=int, default=3, help="best of N runs for each side")
    parser.add_argument("--workers", type=int, default=None, help="tile worker processes")
    parser.add_argument("--workdir", type=Path, default=Path("benchmark-output"))
    args = parser.parse_args()

    args.workdir.mkdir(exist_ok=True)
    scene = args.workdir / f"scene_{args.size}.tif"
    fields = args.workdir / f"fields_{args.size}.gpkg"
    if not scene.exists() or not fields.exists():
        start = time.perf_counter()
        synthetic = synthesize_scene(args.size, seed=7, bands=4, dates=1)
        write_synthetic_scene(synthetic, scene, fields, overwrite=True)
        print(f"synthesised {args.size}x{args.size} scene in {time.perf_counter() - start:.1f} s")

    bare, tiled = [], []
    summary = None
    for _ in range(args.repeat):  # interleave the two sides so machine noise hits both alike
        seconds, n_windows = bare_read(scene, args.chip_size, args.overlap)
        bare.append(seconds)
        out = args.workdir / "dataset"
        start = time.perf_counter()
        summary = tile_scenes(
            [scene],
            fields,
            out,
            chip_size=args.chip_size,
            overlap=args.overlap,
            compress=args.compress,
            workers=args.workers,
            overwrite=True,
        )
        tiled.append(time.perf_counter() - start)
        shutil.rmtree(out)
    assert summary is not None
    chips = summary.candidate_chips
    result = {
        "benchmark": "tile",
        "scene_px": args.size,
        "bands": 4,
        "chip_size": args.chip_size,
        "overlap": args.overlap,
        "compress": args.compress,
        "workers": args.workers or default_workers(n_windows),
        "cpus": os.cpu_count(),
        "windows": n_windows,
        "chips_written": summary.chips_written,
        "instances": sum(summary.instances_by_split.values()),
        "bare_read_s": round(min(bare), 3),
        "tile_s": round(min(tiled), 3),
        "chips_per_s": round(chips / min(tiled), 1),
        "ratio_to_bare_read": round(min(tiled) / min(bare), 2),
        "phases_s": {k: round(v, 2) for k, v in summary.timings.items()},
        "target_ratio": 3.0,
    }
    print(
        f"tile: {result['chips_per_s']} chips/s; bare read {result['bare_read_s']} s, "
        f"tile {result['tile_s']} s: {result['ratio_to_bare_read']}x the bare read (target <= 3x)"
    )
    print("phases (s): " + ", ".join(f"{k} {v}" for k, v in result["phases_s"].items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
