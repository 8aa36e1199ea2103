"""Models and methods by name, so a configuration can pick them.

Two tables, both filled lazily (entries are ``"package.module:attribute"`` strings until used, so
importing this module imports no network code):

* :data:`MODELS`: ``name -> callable(**options) -> nn.Module``, the network (``model`` section),
  from :mod:`deqir.priors.registry` (the pretrained denoisers' sidecars name networks too);
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

from collections.abc import Callable
from typing import Any

from torch import nn

from deqir.errors import ConfigError
from deqir.priors.registry import (  # noqa: F401 (re-exported: the networks' table)
    MODELS,
    _register,
    build_model,
    check_options,
    register_model,
    resolve,
)

METHODS: dict[str, str | Callable[..., nn.Module]] = {
    "red_equilibrium": "deqir.methods.equilibrium:build_red_equilibrium",
    "elder": "deqir.methods.elder:build_elder",
    "loop_unrolled": "deqir.methods.unrolling:build_loop_unrolled",
    "prox_grad_equilibrium": "deqir.methods.unrolling:build_prox_grad_equilibrium",
}


def register_method(name: str, builder: Callable[..., nn.Module] | None = None):
    """Register a method builder ``builder(network, **options) -> nn.Module`` under ``name``."""
    return _register(METHODS, name, builder)


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
