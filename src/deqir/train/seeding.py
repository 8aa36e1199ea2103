"""Counter-based seeds: every random draw of training is a pure function of (seed, stream, step, index).

Each training sample ``j`` of the global batch at step ``t`` draws its crop, its noise level and
its noise from ``generator(seed, stream, t, j)``. The data and task "generator state" of a run
is therefore just ``(seed, step)``: resuming from a checkpoint continues exactly, and a
distributed run in which each process simulates only its shard of the global batch sees the
very same samples as a single process (whatever the number of processes).

Example:
    >>> import torch
    >>> from deqir.train.seeding import derive_seed, generator
    >>> derive_seed(0, 1, 2) == derive_seed(0, 1, 2) != derive_seed(0, 2, 1)
    True
    >>> a = torch.rand(3, generator=generator(0, 1, 2))
    >>> torch.equal(a, torch.rand(3, generator=generator(0, 1, 2)))
    True
"""

from __future__ import annotations

import torch

DATA, TASK, VAL, TEST = 1, 2, 3, 4  # streams
_MASK = (1 << 64) - 1


def derive_seed(*keys: int) -> int:
    """A 63-bit seed mixing the integers ``keys`` (SplitMix64 finaliser, order-sensitive)."""
    h = 0x9E3779B97F4A7C15
    for k in keys:
        h = (h ^ (int(k) & _MASK)) & _MASK
        h = (h + 0x9E3779B97F4A7C15) & _MASK
        h = ((h ^ (h >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        h = ((h ^ (h >> 27)) * 0x94D049BB133111EB) & _MASK
        h ^= h >> 31
    return h & ((1 << 63) - 1)


def generator(*keys: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with :func:`derive_seed` of ``keys``."""
    return torch.Generator().manual_seed(derive_seed(*keys))
