"""``fieldseg predict``: a scene and a trained model -> one polygon per field."""

from __future__ import annotations

from pathlib import Path

import click

from fieldseg.cli.options import device_option, overwrite_option


@click.command()
@click.argument("scene", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    required=True,
    type=click.Path(path_type=Path),
    help="Fields file: .gpkg (layer 'fields', QGIS style), .parquet, .fgb or .geojson.",
)
@click.option(
    "-m",
    "--model",
    "model_path",
    required=True,
    type=click.Path(path_type=Path),
    help="A checkpoint (.pt) or a run folder (its best.pt) from `fieldseg train`.",
)
@click.option(
    "--chip-size",
    type=click.IntRange(min=16),
    help="Chip side in pixels [default: the model's training chips].",
)
@click.option(
    "--overlap",
    type=click.IntRange(min=2),
    help="Overlap of neighbouring chips in pixels [default: a quarter of a chip].",
)
@click.option(
    "--batch-size", type=click.IntRange(min=1), default=4, show_default=True,
    help="Chips per model call.",
)  # fmt: skip
@click.option(
    "--score-threshold",
    type=click.FloatRange(0, 1),
    default=None,
    help="Drop fields scoring less [default: the model's: 0.5 for instance models, none for "
    "the U-Net, whose own score floor is tuned on val].",
)
@click.option(
    "--min-area-m2",
    type=click.FloatRange(min=0),
    help="Drop fields smaller than this [default: four pixels].",
)
@click.option(
    "--simplify-m",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Simplify polygons by this tolerance in metres; neighbours keep sharing their edges.",
)
@click.option(
    "--extent",
    type=click.Path(path_type=Path),
    help="Vector file: predict only inside its polygons.",
)
@click.option(
    "--bbox",
    type=float,
    nargs=4,
    metavar="XMIN YMIN XMAX YMAX",
    help="Predict only inside this box (scene CRS).",
)
@click.option(
    "--seams",
    type=click.Choice(["auto", "instances", "blend"]),
    default="auto",
    show_default=True,
    help="Join chips by stitching their instances, or by blending per-pixel maps (U-Net); "
    "auto blends where the model can.",
)
@click.option(
    "--write-rasters",
    type=click.Path(path_type=Path),
    metavar="DIR",
    help="Also write the blended probability maps into DIR: extent.tif and boundary.tif "
    "(float32 0-1, NaN nodata; blended seams only).",
)
@click.option(
    "--ignore-band-names",
    is_flag=True,
    help="Match the scene's bands to the model's by position only (e.g. another year's stack, "
    "whose band names carry other dates).",
)
@device_option
@click.option(
    "--debug-layers",
    is_flag=True,
    help="Add 'chips' (footprints) and 'seams' (chip edges) layers to a GeoPackage output.",
)
@overwrite_option
def predict(
    scene: Path,
    output: Path,
    model_path: Path,
    chip_size: int | None,
    overlap: int | None,
    batch_size: int,
    score_threshold: float | None,
    min_area_m2: float | None,
    simplify_m: float,
    extent: Path | None,
    bbox: tuple[float, float, float, float] | None,
    seams: str,
    write_rasters: Path | None,
    ignore_band_names: bool,
    device: str,
    debug_layers: bool,
    overwrite: bool,
) -> None:
    """Find the fields of SCENE (GeoTIFF or VRT) and write one polygon per field.

    The scene is read chip by chip and fields are written as they are finished, so memory
    stays flat however large the scene. Fields cut by chip seams are joined into one polygon;
    no two polygons overlap.
    """
    from fieldseg.inference import predict_scene
    from fieldseg.wording import counted

    summary = predict_scene(
        scene,
        model_path,
        output,
        chip_size=chip_size,
        overlap=overlap,
        batch_size=batch_size,
        score_threshold=score_threshold,
        min_area_m2=min_area_m2,
        simplify_m=simplify_m,
        extent=extent,
        bbox=bbox or None,
        device=device,
        overwrite=overwrite,
        debug_layers=debug_layers,
        seams=seams,
        write_rasters=write_rasters,
        ignore_band_names=ignore_band_names,
    )
    click.echo(
        f"fields: {summary.output}: {counted(summary.n_fields, 'field')} over "
        f"{summary.area_km2:.1f} km2 ({counted(summary.n_chips, 'chip')}, "
        f"{summary.n_chips_skipped} without data) in "
        f"{summary.seconds['total']:.1f} s"
    )
    if summary.rasters:
        click.echo(f"probability maps: {', '.join(str(p) for p in summary.rasters.values())}")
