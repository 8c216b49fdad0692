"""``fieldseg evaluate``: predicted fields against truth fields -> figures, a map, error layers."""

from __future__ import annotations

from pathlib import Path

import click

from fieldseg.cli.options import label_extent_option, overwrite_option, sparse_option


@click.command()
@click.argument("predicted", type=click.Path(path_type=Path))
@click.argument("truth", type=click.Path(path_type=Path))
@label_extent_option("AOI file: the truth is complete inside it; only fields mostly inside count.")
@sparse_option("The truth holds only drawn fields: predictions count only where they overlap them.")
@click.option(
    "-o", "--output", "report_path", type=click.Path(path_type=Path),
    help="Write the report: *.json the full report, *.txt the printed figures.",
)  # fmt: skip
@click.option(
    "--plot", "plot_path", type=click.Path(path_type=Path),
    help="Write a PNG map of matched, missed, false, split and merged fields.",
)  # fmt: skip
@click.option(
    "--errors", "errors_path", type=click.Path(path_type=Path),
    help="Write a GeoPackage with each field's status, matched id and IoU (styled for QGIS).",
)  # fmt: skip
@click.option(
    "--iou-threshold",
    type=click.FloatRange(0, 1, max_open=True),
    default=0.5,
    show_default=True,
    help="A prediction matches a truth field when their IoU is above this.",
)
@click.option(
    "--pixel-size",
    type=click.FloatRange(min=0, min_open=True),
    default=10.0,
    show_default=True,
    help="Grid of the pixel, boundary and mask AP figures, in metres.",
)
@click.option(
    "--boundary-tolerance",
    type=click.FloatRange(min=0),
    default=10.0,
    show_default=True,
    help="Boundary F1 tolerance in metres (rounded to whole pixels).",
)
@click.option(
    "--ap-tile",
    type=click.IntRange(min=16),
    default=256,
    show_default=True,
    help="Mask AP tiles, in pixels.",
)
@click.option("--no-mask-ap", is_flag=True, help="Skip mask AP (the slowest figure).")
@click.option("--no-pixel-metrics", is_flag=True, help="Skip the pixel and boundary figures.")
@overwrite_option
def evaluate(
    predicted: Path,
    truth: Path,
    label_extent: Path | None,
    sparse: bool,
    report_path: Path | None,
    plot_path: Path | None,
    errors_path: Path | None,
    iou_threshold: float,
    pixel_size: float,
    boundary_tolerance: float,
    ap_tile: int,
    no_mask_ap: bool,
    no_pixel_metrics: bool,
    overwrite: bool,
) -> None:
    """Score PREDICTED field polygons against TRUTH polygons (any OGR files).

    Objects match one to one at IoU > 0.5 (Fields of The World); split and merged truth
    fields measure over- and under-segmentation. Pixel IoU, boundary F1 and mask AP (when
    PREDICTED has a score column) come from both sets rasterised on a --pixel-size grid.
    Every object figure is also given by field size (< 1 ha, 1-5 ha, > 5 ha).
    """
    import logging

    from fieldseg.atomic_output import check_output_file
    from fieldseg.errors import ConfigError
    from fieldseg.evaluation import EvaluationSettings, check_report_path, evaluate_files

    outputs = [p for p in (report_path, plot_path, errors_path) if p is not None]
    if len({p.resolve() for p in outputs}) < len(outputs):
        raise ConfigError("--output, --plot and --errors must be different files")
    inputs = [p for p in (predicted, truth, label_extent) if p is not None]
    for path in outputs:
        check_output_file(path, overwrite=overwrite, inputs=inputs)
    if errors_path is not None and errors_path.suffix.lower() != ".gpkg":
        raise ConfigError(f"--errors writes a GeoPackage; name it *.gpkg, not {errors_path.name}")
    if report_path is not None:
        check_report_path(report_path)
    if plot_path is not None and plot_path.suffix.lower() != ".png":
        raise ConfigError(f"--plot writes a PNG; name it *.png, not {plot_path.name}")
    settings = EvaluationSettings(
        iou_threshold=iou_threshold,
        pixel_size_m=pixel_size,
        boundary_tolerance_m=boundary_tolerance,
        ap_tile_px=ap_tile,
        mask_ap=not no_mask_ap,
        pixel_metrics=not no_pixel_metrics,
    )
    logger = logging.getLogger("fieldseg")
    evaluation = evaluate_files(
        predicted,
        truth,
        label_extent=label_extent,
        sparse=sparse,
        settings=settings,
        on_stage=lambda text: logger.info("evaluate: %s", text),
    )
    click.echo(evaluation.table())
    if report_path is not None:
        evaluation.write_report(report_path, overwrite=overwrite)
        click.echo(f"report: {report_path}")
    if errors_path is not None:
        evaluation.write_errors(errors_path, overwrite=overwrite)
        click.echo(f"error layers: {errors_path} (layers truth, predicted)")
    if plot_path is not None:
        evaluation.plot(plot_path, overwrite=overwrite)
        click.echo(f"map: {plot_path}")
