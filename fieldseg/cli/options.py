"""Option decorators shared by several commands, so each option is defined once."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

overwrite_option: Callable[[F], F] = click.option(
    "--overwrite", is_flag=True, help="Replace the output if it exists (refused otherwise)."
)

device_option: Callable[[F], F] = click.option(
    "--device",
    type=click.Choice(["auto", "cpu", "cuda"]),
    default="auto",
    show_default=True,
    help="Where the model runs; auto picks CUDA when present.",
)

seed_option: Callable[[F], F] = click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="Random seed (>= 0); same seed, same output.",
)


def comma_separated(
    ctx: click.Context, param: click.Parameter, value: str | None
) -> tuple[str, ...] | None:
    """Click callback: split ``a,b,c`` (or a repeated option) into a tuple of names."""
    if value is None:
        return None
    values = value if isinstance(value, tuple) else (value,)
    items = tuple(item.strip() for v in values for item in v.split(",") if item.strip())
    return items or None


def label_extent_option(help_text: str) -> Callable[[F], F]:
    """``--label-extent AOI``: the labels are complete inside AOI (``tile`` and ``evaluate``)."""
    return click.option("--label-extent", type=click.Path(path_type=Path), help=help_text)


def sparse_option(help_text: str) -> Callable[[F], F]:
    """``--sparse``: only the drawn fields are labelled (``tile`` and ``evaluate``)."""
    return click.option("--sparse", is_flag=True, help=help_text)
