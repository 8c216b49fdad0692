"""``fieldseg synth``: write a synthetic agricultural scene and its true field polygons."""

from __future__ import annotations

from pathlib import Path

import click

from fieldseg.cli.options import overwrite_option


@click.command("synth")
@click.option(
    "-o",
    "--output",
    "output",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="GeoTIFF to write (uint16 reflectance x 10000, 10 m pixels).",
)
@click.option(
    "--fields",
    "fields",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Vector file for the true field polygons (.gpkg, layer 'fields').",
)
@click.option(
    "--size", type=int, default=2048, show_default=True, help="Scene width and height, pixels."
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=7,
    show_default=True,
    help="Random seed (>= 0); same seed, same scene.",
)
@click.option("--bands", type=int, default=4, show_default=True, help="Bands per date.")
@click.option("--dates", type=int, default=2, show_default=True, help="Acquisition dates.")
@click.option(
    "--clouds/--no-clouds",
    default=False,
    show_default=True,
    help="Add soft clouds and their shadows, different on each date.",
)
@click.option(
    "--nodata-border",
    is_flag=True,
    help="Blank an irregular strip along one edge (nodata 0), like a swath edge.",
)
@overwrite_option
def synth(
    output: Path,
    fields: Path,
    size: int,
    seed: int,
    bands: int,
    dates: int,
    clouds: bool,
    nodata_border: bool,
    overwrite: bool,
) -> None:
    """Generate a synthetic scene with known fields, for tests, demos and benchmarks.

    Fields range from 0.1 ha to tens of hectares, rotated and irregular, many side by side
    with no gap between them; forest, water and villages are left unlabelled. Bands are
    ordered date by date (red_d1, green_d1, blue_d1, nir_d1, red_d2, ...). Prints the
    figures that make the scene hard.

    \b
    Example:
        fieldseg synth -o scene.tif --fields truth.gpkg --size 2048 --seed 7
    """  # noqa: D301 - click needs the real \b (backspace) to keep the example unwrapped
    from fieldseg.synthetic import synth as run_synth

    difficulty = run_synth(
        output,
        fields,
        size=size,
        seed=seed,
        bands=bands,
        dates=dates,
        clouds=clouds,
        nodata_border=nodata_border,
        overwrite=overwrite,
    )
    click.echo(f"wrote {output} and {fields}")
    click.echo(difficulty.summary())
