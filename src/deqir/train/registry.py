"""Models and methods by name, so a configuration can pick them.

Two tables, both filled lazily (entries are ``"package.module:attribute"`` strings until used, so
importing this module imports no network code):

* :data:`MODELS`: ``name -> callable(**options) -> nn.Module``, the network (``model`` section);
* :data:`METHODS`: ``name -> callable(network, **options) -> nn.Module``, what turns the network
  into the model that is trained (``method`` section); ``none`` uses the network as it is.

A later method plugs in either by one line in these tables, by calling :func:`register_model` /
:func:`register_method` (also usable as decorators) from its module, or with no registration at
all by naming ``"package.module:callable"`` in the configuration.

A trained method model is called by the task as ``model(init)`` or
``model(y, physics, init=init)`` (see :class:`deqir.train.tasks.ReconstructionTask`); the
physics is passed at every call and must not be stored as a submodule (its buffers would
otherwise end up in the weights file).

Example:
    >>> from deqir.train.registry import build_model, register_method
    >>> net = build_model("dncnn", {"depth": 3, "width": 8})
    >>> type(net).__name__
    'DnCNN'
    >>> @register_method("twice")
    ... def twice(network, **options):
    ...     return network
    >>> build_model("dncnn", {"dept": 3})  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    deqir.errors.ConfigError: config model.options: unknown option 'dept' of model 'dncnn'; ...
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
METHODS: dict[str, str | Callable[..., nn.Module]] = {
    "red_equilibrium": "deqir.methods.equilibrium:build_red_equilibrium",
    "elder": "deqir.methods.elder:build_elder",
    "loop_unrolled": "deqir.methods.unrolling:build_loop_unrolled",
    "prox_grad_equilibrium": "deqir.methods.unrolling:build_prox_grad_equilibrium",
}


def register_model(name: str, builder: Callable[..., nn.Module] | None = None):
    """Register a network builder under ``name``; returns the builder (decorator form too)."""
    return _register(MODELS, name, builder)


def register_method(name: str, builder: Callable[..., nn.Module] | None = None):
    """Register a method builder ``builder(network, **options) -> nn.Module`` under ``name``."""
    return _register(METHODS, name, builder)


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


def build_method(name: str, network: nn.Module, options: dict[str, Any] | None = None) -> nn.Module:
    """Wrap ``network`` into method ``name`` (``none``: the network itself)."""
    options = dict(options or {})
    if name in ("none", "", None):
        if options:
            raise ConfigError("config method.options needs a method: set method.name or remove them")
        return network
    builder = resolve("method", METHODS, name)
    check_options(builder, options, "method.options", f"method '{name}'", skip=1)
    return builder(network, **options)
