"""Networks by name, so a configuration (``model.name``) or a sidecar can pick them.

:data:`MODELS` maps ``name -> callable(**options) -> nn.Module``; entries are
``"package.module:attribute"`` strings until used, so importing this module imports no network
code. :func:`resolve` and :func:`check_options` are the name lookup and option check that
:mod:`deqir.train.registry` also uses for its methods.

Example:
    >>> from deqir.priors.registry import build_model
    >>> type(build_model("dncnn", {"depth": 3, "width": 8})).__name__
    'DnCNN'
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from deqir.errors import ConfigError, unknown_name_message

MODELS: dict[str, str | Callable[..., nn.Module]] = {
    "dncnn": "deqir.priors.dncnn:DnCNN",
    "unet": "deqir.priors.unet:UNet",
    "drunet": "deqir.priors.drunet:SmoothResUNet",
    "shallow_cell": "deqir.priors.shallow:ShallowCell",
}


def register_model(name: str, builder: Callable[..., nn.Module] | None = None):
    """Register a network builder under ``name``; returns the builder (decorator form too)."""
    return _register(MODELS, name, builder)


def _register(table: dict, name: str, builder: Callable | None):
    if builder is None:
        return lambda fn: _register(table, name, fn)
    table[name] = builder
    return builder


def resolve(kind: str, table: dict[str, Any], name: str) -> Callable[..., nn.Module]:
    """The callable registered as ``name``, or the object ``name = "module:attr"`` names."""
    entry = table.get(name, name if ":" in name else None)
    if entry is None:
        raise ConfigError(
            f"config {kind}.name: "
            + unknown_name_message(kind, name, sorted(table))
            + "; or give 'package.module:callable'"
        )
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        try:
            obj = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"config {kind}.name: cannot import {entry!r} ({err})") from None
        if name in table:
            table[name] = obj
        entry = obj
    return entry


def check_options(
    builder: Callable,
    options: dict[str, Any],
    where: str,
    what: str,
    skip: int = 0,
    exclude: tuple[str, ...] = (),
) -> None:
    """Raise :class:`ConfigError` for an option ``builder`` does not accept (closest name given).

    The first ``skip`` parameters and those named in ``exclude`` are not options.
    """
    try:
        params = list(inspect.signature(builder).parameters.values())[skip:]
    except (TypeError, ValueError):
        return
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return
    names = [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in exclude
    ]
    for key in options:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1, cutoff=0.5)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(
                f"config {where}: unknown option '{key}' of {what}{hint} Valid options: {', '.join(names)}"
            )


def build_model(name: str, options: dict[str, Any] | None = None) -> nn.Module:
    """Build the network ``name`` with keyword ``options`` (checked against its signature)."""
    options = dict(options or {})
    builder = resolve("model", MODELS, name)
    check_options(builder, options, "model.options", f"model '{name}'")
    return builder(**options)
