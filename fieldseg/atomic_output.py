"""Write outputs so that a failure or Ctrl-C never leaves a half-written file behind.

Every output is first written under a temporary name beside its final path and renamed into
place only when complete. An existing output is refused unless ``overwrite`` is set, and even
then a directory is only replaced when it is one fieldseg wrote (it holds the marker file), so
``--overwrite`` can never delete a folder of the user's inputs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from types import TracebackType

from fieldseg.errors import FieldsegError, OutputExistsError


class OutputPathError(FieldsegError):
    """The output cannot be created where it was asked for."""


def check_output_path(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    marker: str | None = None,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """Return ``path`` as a Path after checking that it may be written.

    Args:
        path: the output file or directory.
        overwrite: whether an existing output may be replaced.
        marker: for a directory output, a file that a replaceable directory must hold (e.g.
            ``dataset.json``): a non-empty directory without it is never replaced.
        inputs: input files that must not lie inside (or be) the output.

    Raises:
        OutputExistsError: the output exists and may not be replaced.
        OutputPathError: the output is ``.``/a parent of the work, or would swallow an input.
    """
    path = Path(path)
    resolved = path.resolve()
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise OutputPathError(f"output {path} is the current folder or one above it")
    from fieldseg.vector_io import split_layer  # vector_io writes through this module

    for item in inputs:
        source = split_layer(item)[0].resolve()  # a layer of a file is the file
        if source == resolved or resolved in source.parents:
            raise OutputPathError(f"output {path} would replace the input {item}")
    if marker is not None and path.exists() and not path.is_dir():
        raise OutputExistsError(f"output {path} is a file; the output is a folder")
    if path.is_dir():
        if any(path.iterdir()):
            if not overwrite:
                raise OutputExistsError(
                    f"output directory {path} is not empty; pass --overwrite "
                    "(overwrite=True in Python) to replace it"
                )
            if marker is not None and not (path / marker).is_file():
                raise OutputExistsError(
                    f"output directory {path} is not empty and holds no {marker}: it was not "
                    "written by fieldseg, so it is not replaced even with --overwrite"
                )
    elif path.exists() and not overwrite:
        raise OutputExistsError(
            f"output {path} exists; pass --overwrite (overwrite=True in Python) to replace it"
        )
    return path


def check_output_file(
    path: str | os.PathLike[str],
    *,
    overwrite: bool,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Path:
    """:func:`check_output_path` for a file, with what writing it would find only at the end.

    For a command that writes its output after a long computation (``evaluate``): a directory
    in the file's place, and a folder that takes no files (``/proc``, a read-only disk, a path
    through a file), found by creating and removing a hidden file there, since permission bits
    say nothing to root.

    Raises:
        OutputExistsError: the output exists and may not be replaced, or is a directory.
        OutputPathError: the output is in the way of an input or cannot be created.
    """
    final = _file_path(check_output_path(path, overwrite=overwrite, inputs=inputs))
    folder = next(p for p in final.absolute().parents if p.exists())  # the rest gets created
    if not folder.is_dir():
        raise OutputPathError(f"cannot write {final}: {folder} is a file, not a folder")
    try:
        handle, probe = tempfile.mkstemp(prefix=".fieldseg-probe.", dir=folder)
    except OSError as exc:
        raise OutputPathError(
            f"cannot write {final}: no file can be created in {folder} ({exc.strerror})"
        ) from exc
    os.close(handle)
    os.unlink(probe)
    return final


def _file_path(path: Path) -> Path:
    """``path``, unless a directory stands where the file should go."""
    if path.is_dir():
        raise OutputExistsError(f"output {path} is a directory, expected a file")
    return path


@contextlib.contextmanager
def _parent_folders(path: Path) -> Iterator[None]:
    """Create the missing parent folders of ``path``; remove them again if the body fails."""
    missing = [p for p in reversed(path.parents) if not p.exists()]
    try:
        for folder in missing:
            folder.mkdir(exist_ok=True)
    except OSError as exc:
        raise OutputPathError(f"cannot create the folder for {path}: {exc.strerror}") from exc
    try:
        yield
    except BaseException:
        for folder in reversed(missing):
            with contextlib.suppress(OSError):
                folder.rmdir()  # only if empty: never remove what someone else put there
        raise


def _read_umask() -> int:
    umask = os.umask(0)  # the only portable way to read it; done once, at import
    os.umask(umask)
    return umask


_UMASK = _read_umask()


def _umask_mode(mode: int) -> int:
    """``mode`` less the process umask (what a plain ``mkdir``/``open`` would give)."""
    return mode & ~_UMASK


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
    final = _file_path(check_output_path(path, overwrite=overwrite))
    with _parent_folders(final):
        try:
            fd, tmp_name = tempfile.mkstemp(
                prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent
            )
        except OSError as exc:
            raise OutputPathError(f"cannot write {final}: {exc.strerror}") from exc
        os.close(fd)
        tmp = Path(tmp_name)
        tmp.unlink()  # let the writer create it; some drivers refuse an existing empty file
        try:
            yield tmp
            os.chmod(tmp, _umask_mode(0o666))  # mkstemp makes files private (0600)
            os.replace(tmp, final)
        finally:
            for leftover in (tmp, *tmp.parent.glob(tmp.name + "*")):
                _remove(leftover)


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    marker: str | None = None,
    inputs: Iterable[str | os.PathLike[str]] = (),
) -> Iterator[Path]:
    """Yield a temporary directory to fill; on success it takes the place of ``path``.

    An existing directory (see :func:`check_output_path` for which may be replaced) is moved
    aside first and deleted only after the new one is in place, so an interrupted run leaves
    either the old output or the new one, never a mix.
    """
    final = check_output_path(path, overwrite=overwrite, marker=marker, inputs=inputs)
    with _parent_folders(final):
        try:
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
        except OSError as exc:
            raise OutputPathError(f"cannot write {final}: {exc.strerror}") from exc
        os.chmod(tmp, _umask_mode(0o777))  # mkdtemp makes folders private (0700)
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


def finish_then_exit(
    atomic: AbstractContextManager[object],
    finish: Callable[[], None],
    kind: type[BaseException] | None,
    error: BaseException | None,
    traceback: TracebackType | None,
) -> bool | None:
    """The ``__exit__`` of a writer over atomic outputs: ``finish`` the files, then commit.

    On success ``finish`` runs first (closing datasets, writing indexes); should it fail, the
    atomic outputs are rolled back with its error, which is raised. On an error in the ``with``
    block they are rolled back without finishing.
    """
    if kind is None:
        try:
            finish()
        except BaseException as exc:  # the atomic outputs clean up, then it is raised
            atomic.__exit__(type(exc), exc, exc.__traceback__)
            raise
    return atomic.__exit__(kind, error, traceback)
