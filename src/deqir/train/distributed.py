"""Data-parallel training: device choice, process groups, batch shards, collective helpers.

Launch with ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``); :func:`setup` reads those variables and joins the group with ``gloo`` on the
CPU or ``nccl`` on CUDA. Each process simulates and trains on a disjoint, contiguous shard of the
global batch (:func:`shard`); ``DistributedDataParallel`` averages the gradients, so a run on
``n`` processes follows a single-process run at the same global batch (up to floating-point
summation order; batch norm statistics are per process, so use models without it for an exact
match). Without those variables everything runs in one process.

::

    torchrun --nproc_per_node=2 -m deqir.train configs/denoiser_tiny.yaml --device cpu

:func:`spawn` starts ``n`` local processes without ``torchrun`` (used by the tests).

Example:
    >>> from deqir.train.distributed import DistInfo, resolve_device, shard
    >>> resolve_device("cpu").type
    'cpu'
    >>> list(shard(8, DistInfo(rank=1, world_size=2)))
    [4, 5, 6, 7]
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from deqir.errors import ConfigError, InvalidValueError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: rank, number of processes, device.

    Attributes:
        rank: global rank (0 is the main process that writes files).
        world_size: number of processes.
        local_rank: rank on this machine (picks the GPU).
        device: the device of this process.
        owns_group: whether :func:`setup` created the process group (and :func:`teardown` ends it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def resolve_device(device: str | torch.device = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` -> ``cuda:<local_rank>`` when available, else ``cpu``; ``cuda`` -> ``cuda:<local_rank>``.

    Raises:
        InvalidValueError: an unknown name, or CUDA asked for but not available.
    """
    name = str(device)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise InvalidValueError(f"unknown device '{device}'; use cpu, cuda, cuda:N or auto") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidValueError(
                f"device '{device}' asked for, but CUDA is not available here; use --device cpu or auto"
            )
        if dev.index is None:
            dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    elif dev.type != "cpu":
        raise InvalidValueError(f"device '{device}' is not supported; use cpu, cuda, cuda:N or auto")
    return dev


def setup(device: str | torch.device = "auto") -> DistInfo:
    """Read the ``torchrun`` environment, choose the device and join the process group."""
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
    dev = resolve_device(device, local_rank)
    owns = False
    if world > 1:
        if not dist.is_available():
            raise InvalidValueError("this PyTorch build has no torch.distributed; run one process")
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", rank=rank, world_size=world)
            owns = True
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev, owns_group=owns)


def teardown(info: DistInfo) -> None:
    """Leave the process group if :func:`setup` created it."""
    import torch.distributed as dist

    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def shard(global_batch: int, info: DistInfo) -> range:
    """Indices of this process's contiguous shard of a global batch.

    Raises:
        ConfigError: the global batch does not divide evenly over the processes.
    """
    if global_batch % info.world_size:
        raise ConfigError(
            f"config data.batch_size ({global_batch}) must be a multiple of the number "
            f"of processes ({info.world_size}) so that every process gets an equal shard"
        )
    per = global_batch // info.world_size
    return range(info.rank * per, (info.rank + 1) * per)


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Sum of ``t`` over processes (``t`` itself with one process)."""
    if info.distributed:
        import torch.distributed as dist

        t = t.clone()
        dist.all_reduce(t)
    return t


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (``[obj]`` with one process)."""
    if not info.distributed:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    """Wait for every process (no-op with one process)."""
    if info.distributed:
        import torch.distributed as dist

        dist.barrier()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _spawn_entry(
    local_rank: int, fn: Callable, nprocs: int, port: int, args: tuple, kwargs: dict, threads: int
) -> None:
    os.environ.update(
        {
            "RANK": str(local_rank),
            "LOCAL_RANK": str(local_rank),
            "WORLD_SIZE": str(nprocs),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    torch.set_num_threads(threads)
    fn(*args, **kwargs)


def spawn(fn: Callable, nprocs: int, *args: Any, threads: int = 1, **kwargs: Any) -> None:
    """Run ``fn(*args, **kwargs)`` in ``nprocs`` local processes set up like ``torchrun`` would.

    ``fn`` must be importable by name (a module-level function) and typically calls
    :func:`setup` (as :func:`deqir.train.train_from_config` does).

    Example:
        >>> from deqir.train import train_from_config
        >>> spawn(train_from_config, 2, "configs/denoiser_tiny.yaml", device="cpu")  # doctest: +SKIP
    """
    import torch.multiprocessing as mp

    mp.spawn(_spawn_entry, args=(fn, nprocs, free_port(), args, kwargs, threads), nprocs=nprocs, join=True)
