"""``fieldseg stack``: band files -> one multi-band VRT scene."""

from __future__ import annotations

from pathlib import Path

import click

from fieldseg.cli.options import comma_separated, overwrite_option


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o", "--output", required=True, type=click.Path(path_type=Path), help="The .vrt to write."
)
@click.option(
    "--band-names",
    callback=comma_separated,
    help="Comma-separated names, one per band in order (default: from the file names, and "
    "a multi-band file's own band descriptions).",
)
@overwrite_option
def stack(
    files: tuple[Path, ...], output: Path, band_names: tuple[str, ...] | None, overwrite: bool
) -> None:
    """Stack band FILES, in the order given, into one multi-band scene (a GDAL VRT).

    Each file gives its bands in turn: usually one band a file, every band of a multi-band one.

    The files must share CRS, pixel grid, size, data type and nodata value. No pixels are
    copied: the VRT points at the files and opens in QGIS like any raster. Order the files date
    by date, e.g. `fieldseg stack 0615_{red,green,blue,nir}.tif 0715_{red,green,blue,nir}.tif
    -o scene.vrt`.
    """
    from fieldseg.raster_io import open_raster
    from fieldseg.stacking import stack_bands
    from fieldseg.wording import counted

    written = stack_bands(files, output, band_names=band_names, overwrite=overwrite)
    with open_raster(written) as src:
        names = src.descriptions
    click.echo(f"wrote {written}: {counted(len(names), 'band')} ({', '.join(names)})")
