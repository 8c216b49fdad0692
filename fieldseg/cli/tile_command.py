"""``fieldseg tile``: scenes + field polygons -> chips + georeferenced COCO + splits."""

from __future__ import annotations

from pathlib import Path

import click

from fieldseg.cli.options import label_extent_option, overwrite_option, seed_option, sparse_option


@click.command()
@click.argument("scenes", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--labels",
    required=True,
    type=click.Path(path_type=Path),
    help="Field polygons: any vector file OGR reads (GPKG, GeoJSON, shapefile, GeoParquet).",
)
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path), help="Dataset directory."
)
@click.option("--chip-size", default=256, show_default=True, help="Chip side in pixels.")
@click.option("--overlap", default=64, show_default=True, help="Pixels shared by neighbours.")
@click.option(
    "--split",
    help="train,val,test fractions, dealt out by spatial blocks [default: 0.8,0.1,0.1].",
)
@click.option("--split-column", help="Label column with train/val/test per field (no blocks).")
@click.option(
    "--block-size",
    type=int,
    help="Split block side in pixels [default: 4 chips, less on small scenes].",
)
@click.option("--class-column", help="Label column whose values become COCO categories.")
@label_extent_option("AOI file: labels are complete inside it; only chips fully inside are kept.")
@sparse_option("Only the drawn fields are known: chips go where they are, the rest is ignored.")
@click.option(
    "--max-nodata",
    default=0.5,
    show_default=True,
    help="Skip chips with a larger share of nodata pixels.",
)
@click.option("--nodata", type=float, help="Nodata value for scenes whose file declares none.")
@click.option(
    "--compress",
    type=click.Choice(["zstd", "deflate", "lzw", "none"]),
    default="zstd",
    show_default=True,
    help="GeoTIFF compression of the chips (zstd: fast; deflate: most portable).",
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Processes cutting chips [default: one per core, up to 8; one for small jobs].",
)
@seed_option
@overwrite_option
def tile(
    scenes: tuple[Path, ...],
    labels: Path,
    output: Path,
    chip_size: int,
    overlap: int,
    split: str | None,
    split_column: str | None,
    block_size: int | None,
    class_column: str | None,
    label_extent: Path | None,
    sparse: bool,
    max_nodata: float,
    nodata: float | None,
    compress: str,
    workers: int | None,
    seed: int,
    overwrite: bool,
) -> None:
    """Cut labelled SCENES into overlapping chips with georeferenced COCO annotations.

    Each SCENE is one raster (GeoTIFF or a VRT from `fieldseg stack`); several SCENE arguments
    are several scenes with the same bands. Writes OUTPUT/dataset.json (bands, statistics,
    splits), OUTPUT/{train,val,test}.json (COCO) and OUTPUT/chips/. See docs/formats.md.
    """
    from fieldseg.tiling import tile_scenes

    summary = tile_scenes(
        scenes,
        labels,
        output,
        chip_size=chip_size,
        overlap=overlap,
        split=split,
        split_column=split_column,
        class_column=class_column,
        label_extent=label_extent,
        sparse=sparse,
        max_nodata=max_nodata,
        nodata=nodata,
        seed=seed,
        block_size=block_size,
        compress=compress,
        workers=workers,  # None: one per core on large jobs
        overwrite=overwrite,
    )
    for line in summary.lines():
        click.echo(line)
