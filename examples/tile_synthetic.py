"""From nothing to a training set with the library API: synthesise a scene, then tile it.

    .venv/bin/python examples/tile_synthetic.py [OUTPUT_DIR]

The same as `fieldseg synth` followed by `fieldseg tile`, showing the functions behind them and
what the dataset holds.
"""

from __future__ import annotations

import sys
from pathlib import Path

from pycocotools.coco import COCO

from fieldseg.dataset_description import DatasetDescription
from fieldseg.synthetic import synth
from fieldseg.tiling import tile_scenes


def main(out: Path) -> None:
    """Synthesise, tile and describe the dataset in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    scene, truth = out / "scene.tif", out / "truth.gpkg"
    difficulty = synth(scene, truth, size=768, seed=3, bands=4, dates=2, overwrite=True)
    print(difficulty.summary())

    summary = tile_scenes(
        [scene], truth, out / "dataset", chip_size=128, overlap=32, seed=3, overwrite=True
    )
    print("\n".join(summary.lines()))

    description = DatasetDescription.load(out / "dataset")
    print("bands:", ", ".join(description.bands))
    for stats in description.normalisation[:2]:
        print(f"  {stats.name}: p2 {stats.p2:.0f}, p98 {stats.p98:.0f}, mean {stats.mean:.0f}")
    train = COCO(str(out / "dataset" / "train.json"))
    first = train.loadImgs(train.getImgIds()[0])[0]
    print("first train chip:", first["file_name"], "window", first["window"])


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("example-output"))
