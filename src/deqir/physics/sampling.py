"""Random minibatches of measurement blocks, seeded through ``torch.Generator``.

Two strategies draw ``w`` of ``b`` blocks:

* ``uniform``: ``w`` distinct blocks uniformly at random;
* ``stratified``: split the blocks into ``groups`` contiguous groups of equal size and draw the
  same ``w / groups`` offsets in every group, so a CT minibatch spreads evenly over 180 degrees
  (ODER's demo: b = 90, w = 30, 5 groups of 18, 6 offsets).

Both include every block with probability ``w / b``, so ``(b / w) * sum_{i in B} grad g_i`` is an
unbiased estimate of the full gradient.

Example:
    >>> from deqir.physics.sampling import BlockSampler
    >>> sampler = BlockSampler(90, 30, strategy="stratified", groups=5, seed=0)
    >>> blocks = sampler.sample()
    >>> blocks.numel(), int(blocks[6] - blocks[0])
    (30, 18)
"""

from __future__ import annotations

import torch

from deqir.errors import InvalidValueError, unknown_name_message

STRATEGIES = ("uniform", "stratified")


class BlockSampler:
    """Draws a fresh sorted ``LongTensor`` of block indices at every :meth:`sample` call.

    Args:
        num_blocks: total number of blocks ``b``.
        batch_size: blocks per minibatch ``w`` (``1 <= w <= b``).
        strategy: ``"uniform"`` or ``"stratified"``.
        groups: number of contiguous groups for ``stratified``; must divide both ``b`` and ``w``.
            Defaults to the largest common divisor of ``b`` and ``w`` that leaves each group at
            least two blocks to choose from (5 for 30 of 90 when given explicitly, as in ODER).
        seed: seed of the sampler's own generator (ignored when ``generator`` is given).
        generator: a ``torch.Generator`` to draw from.
    """

    def __init__(
        self,
        num_blocks: int,
        batch_size: int,
        strategy: str = "uniform",
        groups: int | None = None,
        seed: int = 0,
        generator: torch.Generator | None = None,
    ):
        if strategy not in STRATEGIES:
            raise InvalidValueError(unknown_name_message("sampling strategy", strategy, STRATEGIES))
        if not 1 <= int(batch_size) <= int(num_blocks):
            raise InvalidValueError(
                f"minibatch size must be between 1 and the number of blocks ({num_blocks}); got {batch_size}"
            )
        self.num_blocks, self.batch_size, self.strategy = int(num_blocks), int(batch_size), strategy
        if strategy == "stratified":
            groups = _default_groups(self.num_blocks, self.batch_size) if groups is None else int(groups)
            if groups < 1 or self.num_blocks % groups or self.batch_size % groups:
                raise InvalidValueError(
                    f"stratified sampling needs a number of groups dividing both b = {num_blocks} "
                    f"and w = {batch_size}; got groups = {groups}"
                )
        self.groups = groups
        self.generator = generator if generator is not None else torch.Generator().manual_seed(seed)

    @property
    def is_full(self) -> bool:
        """True when every minibatch is all blocks (``w == b``)."""
        return self.batch_size == self.num_blocks

    def sample(self) -> torch.Tensor:
        """A fresh minibatch: sorted, unique block indices on the CPU."""
        if self.is_full:
            return torch.arange(self.num_blocks)
        if self.strategy == "uniform":
            idx = torch.randperm(self.num_blocks, generator=self.generator)[: self.batch_size]
            return idx.sort().values
        size = self.num_blocks // self.groups
        per_group = self.batch_size // self.groups
        offsets = torch.randperm(size, generator=self.generator)[:per_group].sort().values
        starts = torch.arange(self.groups) * size
        return (starts[:, None] + offsets[None, :]).flatten()

    def state_dict(self) -> dict:
        """Generator state, so a resumed run draws the same minibatches."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        self.generator.set_state(state["generator"])

    def __repr__(self) -> str:
        extra = f", groups={self.groups}" if self.strategy == "stratified" else ""
        return f"BlockSampler({self.num_blocks}, {self.batch_size}, strategy='{self.strategy}'{extra})"


def _default_groups(b: int, w: int) -> int:
    import math

    g = math.gcd(b, w)
    while g > 1 and b // g < 2:
        g -= 1
        while g > 1 and (b % g or w % g):
            g -= 1
    return max(g, 1)


class SagaGradient:
    """Variance-reduced (SAGA) minibatch estimate of ``∇ ½‖A x − y‖²`` for a block operator.

    Plain ODER estimates the data gradient by ``(b/w) Σ_{i∈B} A_iᵀ r_i`` with ``r_i = A_i x − y_i``;
    its variance does not vanish at a fixed point, so the iterates never settle. SAGA keeps the
    last residual ``t_i`` seen for every block (a table the size of ``y``) and their back-projected
    sum ``G = Σ_i A_iᵀ t_i``, and returns::

        ĝ(x) = (b/w) Σ_{i∈B} A_iᵀ (r_i − t_i) + G

    which is unbiased for *any* table (its mean over the draw is ``Σ_i A_iᵀ r_i``), and whose
    variance shrinks as the iterates converge, so the iteration reaches the full-batch fixed
    point. ``G`` is updated with the same ``A_Bᵀ (r_B − t_B)``, so a call costs exactly what the
    plain estimate costs: one forward and one adjoint of the ``w`` drawn blocks. The table starts
    at zero (no full pass), so the first call is the plain minibatch estimate.

    Args:
        physics: a block operator whose blocks are an axis of the measurement (``block_dim``).
        y: the full measurements ``(batch, *physics.measurement_shape())``; they are data here
            (detached: no gradient flows to ``y``).

    Example:
        >>> import torch
        >>> from deqir.physics import ParallelBeamCT
        >>> from deqir.physics.sampling import SagaGradient
        >>> ct = ParallelBeamCT(16, num_angles=6)
        >>> x, y = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 6, 23)
        >>> saga = SagaGradient(ct, y)
        >>> g = saga(x, torch.tensor([0, 3]))          # plain estimate, fills two table rows
        >>> g = saga(x, torch.tensor([1, 2, 4, 5]))
        >>> torch.allclose(saga(x, torch.tensor([0, 3]), update=False), ct.data_grad(x, y), atol=1e-5)
        True
    """

    def __init__(self, physics, y: torch.Tensor):
        if physics.block_dim is None:
            raise InvalidValueError(
                f"the SAGA estimator keeps a residual per block along the measurement's block axis; "
                f"{type(physics).__name__} has no block axis (block_dim is None): use the plain "
                f"minibatch estimator (estimator='minibatch')"
            )
        physics.check_measurement(y, None)
        physics.check_finite(y)
        self.physics, self.y = physics, y.detach()
        self.table = torch.zeros_like(self.y)
        self.table_gradient: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, blocks, update: bool = True) -> torch.Tensor:
        """The estimate at ``x`` from ``blocks`` (``None``: the exact gradient).

        With ``update`` (default) the drawn blocks' residuals replace their table entries; pass
        ``update=False`` to evaluate the same fixed map repeatedly (an implicit adjoint solve).
        """
        op = self.physics
        b = op.as_blocks(blocks)
        if b is None:
            return op.data_grad(x, self.y)
        residual = op.A(x, b) - op.restrict(self.y, b)
        change = op.A_adjoint(residual - op.restrict(self.table, b), b)
        known = self.table_gradient if self.table_gradient is not None else torch.zeros_like(change)
        estimate = change * op.minibatch_scale(b) + known
        if update:
            with torch.no_grad():
                self.table.index_copy_(
                    op.block_dim, b.to(self.table.device), residual.detach().to(self.table.dtype)
                )
                self.table_gradient = known + change.detach()
        return estimate
