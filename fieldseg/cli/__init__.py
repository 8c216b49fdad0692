"""The ``fieldseg`` command line: thin click commands over the library functions.

Commands live in their own modules and import heavy libraries inside the command body, so that
``fieldseg --help`` is instant. User mistakes (:class:`fieldseg.errors.FieldsegError`) become one
line on stderr and exit status 1, never a traceback. Ctrl-C and SIGTERM (``kill``, a batch
scheduler's time limit) unwind like an error, so temporary outputs are removed on the way out.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

import click

from fieldseg import __version__
from fieldseg.cli.evaluate_command import evaluate
from fieldseg.cli.predict_command import predict
from fieldseg.cli.stack_command import stack
from fieldseg.cli.synth_command import synth
from fieldseg.cli.tile_command import tile
from fieldseg.cli.train_command import train
from fieldseg.errors import FieldsegError

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 128 + signal.SIGTERM


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the process is, so that it unwinds as Ctrl-C does."""


@contextlib.contextmanager
def _sigterm_unwinds() -> Iterator[None]:
    """While the command runs, SIGTERM raises :class:`Terminated` instead of killing at once.

    Python's default for SIGTERM ends the process without running ``finally`` blocks, which
    would leave the temporary outputs of :mod:`fieldseg.atomic_output` behind. The other
    processes of a distributed run write nothing, so they keep the default and end at once
    (one may be waiting in a collective, where no handler could run). A second SIGTERM during
    the clean-up is ignored.
    """
    if (
        threading.current_thread() is not threading.main_thread()
        or os.environ.get("RANK", "0") != "0"
    ):
        yield  # handlers can only be set from the main thread; other ranks write nothing
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # let the clean-up finish
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        # None: a handler not set from Python; the default is the closest to it
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


class FieldsegGroup(click.Group):
    """A click group that reports user errors as one clear line instead of a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with _sigterm_unwinds():
                return super().invoke(ctx)
        except FieldsegError as exc:
            click.echo(f"Error: {exc}", err=True)
            ctx.exit(EXIT_USER_ERROR)
        except KeyboardInterrupt as exc:
            terminated = isinstance(exc, Terminated)
            message = "Terminated" if terminated else "Interrupted"
            message += "; no half-written file was left behind."
            if ctx.invoked_subcommand == "train":
                message += (
                    " The run folder keeps its last finished epoch: the same command with "
                    "--resume goes on (before the first epoch, without --resume it starts again)."
                )
            click.echo(message, err=True)
            ctx.exit(EXIT_TERMINATED if terminated else EXIT_INTERRUPTED)


def _configure_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    logger = logging.getLogger("fieldseg")
    logger.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False


@click.group(cls=FieldsegGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="fieldseg")
@click.option("-v", "--verbose", count=True, help="Show debugging detail.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors; no progress bars.")
def main(verbose: int, quiet: bool) -> None:
    """Find every agricultural field in satellite imagery as its own polygon.

    Typical order: `stack` band files into one scene, `tile` labelled scenes into a training
    set, `train` a model on it, `predict` the fields of a scene, `evaluate` them against
    truth polygons; `synth` makes a labelled
    synthetic scene for trying things out. Run `fieldseg COMMAND --help` for each command's options.
    """
    from fieldseg.progress import set_progress_enabled

    _configure_logging(verbose, quiet)
    set_progress_enabled(False if quiet else None)


main.add_command(synth)
main.add_command(stack)
main.add_command(tile)
main.add_command(train)
main.add_command(predict)
main.add_command(evaluate)

__all__ = ["main"]
