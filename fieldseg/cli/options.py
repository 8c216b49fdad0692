"""Option decorators shared by several commands, so each option is defined once."""

from __future__ import annotations

from collections.abc import Callable
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
    "--seed", type=int, default=0, show_default=True, help="Random seed; same seed, same output."
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
