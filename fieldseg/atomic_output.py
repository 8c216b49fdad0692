"""Write outputs so that a failure or Ctrl-C never leaves a half-written file behind.

Every output is first written under a temporary name beside its final path and renamed into
place only when complete. An existing output is refused unless ``overwrite`` is set.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from fieldseg.errors import OutputExistsError


def check_output_path(path: str | os.PathLike[str], *, overwrite: bool) -> Path:
    """Return ``path`` as a Path, refusing an existing file or non-empty directory.

    Raises:
        OutputExistsError: ``path`` exists (a non-empty directory, or a file) and ``overwrite``
            is false.
    """
    path = Path(path)
    if path.is_dir():
        if any(path.iterdir()) and not overwrite:
            raise OutputExistsError(
                f"output directory {path} is not empty; pass --overwrite to replace it"
            )
    elif path.exists() and not overwrite:
        raise OutputExistsError(f"output {path} exists; pass --overwrite to replace it")
    return path


@contextlib.contextmanager
def _parent_folders(path: Path) -> Iterator[None]:
    """Create the missing parent folders of ``path``; remove them again if the body fails."""
    missing = [p for p in reversed(path.parents) if not p.exists()]
    for folder in missing:
        folder.mkdir(exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in reversed(missing):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: never remove what someone else put there
        raise


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path to write; on success it replaces ``path`` in one rename.

    The temporary name keeps the final suffix so that drivers chosen by extension (GDAL/OGR)
    pick the right format. Side files a driver leaves beside it (e.g. ``.aux.xml``) are removed.
    """
    final = check_output_path(path, overwrite=overwrite)
    if final.is_dir():
        raise OutputExistsError(f"output {final} is a directory, expected a file")
    with _parent_folders(final):
        fd, tmp_name = tempfile.mkstemp(
            prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent
        )
        os.close(fd)
        tmp = Path(tmp_name)
        tmp.unlink()  # let the writer create it; some drivers refuse an existing empty file
        try:
            yield tmp
            os.replace(tmp, final)
        finally:
            for leftover in (tmp, *tmp.parent.glob(tmp.name + "*")):
                _remove(leftover)


@contextlib.contextmanager
def atomic_directory(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it takes the place of ``path``.

    An existing directory is moved aside first and deleted only after the new one is in place,
    so an interrupted run leaves either the old output or the new one, never a mix.
    """
    final = check_output_path(path, overwrite=overwrite)
    with _parent_folders(final):
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        try:
            yield tmp
            old: Path | None = None
            if final.exists():
                old = Path(
                    tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=final.parent)
                )
                os.replace(final, old / final.name)
            os.replace(tmp, final)
            if old is not None:
                _remove(old)
        finally:
            _remove(tmp)
