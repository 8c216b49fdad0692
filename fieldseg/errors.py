"""User-facing errors: the one exception family the CLI reports as a single clear line.

Anything raised as a :class:`FieldsegError` is a problem with the user's input or environment
(a missing file, a raster without a CRS, a bad option); anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations


class FieldsegError(Exception):
    """Base class of every error that is the user's to fix."""


class InputFileError(FieldsegError):
    """An input file is missing, unreadable, corrupt or unsuitable."""


class CRSError(FieldsegError):
    """A dataset has no CRS, or datasets that must share one do not."""


class OutputExistsError(FieldsegError):
    """The output exists and ``overwrite`` was not asked for."""


class ConfigError(FieldsegError):
    """An option or configuration value is invalid."""


def first_line(exc: BaseException) -> str:
    """The first line of a library's exception message, for a one-line user error.

    rasterio's read errors say only "See previous exception for details": the reason (GDAL's
    own message, e.g. ``TIFFReadEncodedTile() failed``) is then taken from their cause.
    """
    text = str(exc).strip()
    cause = exc.__cause__ or exc.__context__
    if "see previous exception" in text.lower() and cause is not None:
        return first_line(cause)
    return text.splitlines()[0] if text else type(exc).__name__
