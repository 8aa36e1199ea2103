"""Forward behaviour of the fixed-point solvers: convergence, stopping rules, failures, stochastic maps."""

from __future__ import annotations

import contextlib
import subprocess
import sys

import pytest
import torch

from deqir.errors import ConvergenceError, DeqirError, DTypeError, ShapeError
from deqir.solvers import (
    Anderson,
    Broyden,
    FixedPointIteration,
    JacobianFree,
    Nesterov,
    StochasticMap,
    StochasticMapError,
    fixed_point,
    lipschitz_estimate,
    spectral_norm_all,
)

ALL = {
    "plain": lambda **kw: FixedPointIteration(**kw),
    "damped": lambda **kw: FixedPointIteration(damping=0.7, **kw),
    "nesterov": lambda **kw: Nesterov(restart=True, **kw),
    "anderson": lambda **kw: Anderson(**kw),
    "anderson_abs": lambda **kw: Anderson(regularization_mode="absolute", **kw),
    "broyden": lambda **kw: Broyden(**kw),
}


def _cos_map(batch: int = 3, dim: int = 6, dtype=torch.float64):
    gen = torch.Generator().manual_seed(0)
    b = torch.randn(batch, dim, generator=gen, dtype=dtype)
    return (lambda z: 0.6 * torch.cos(z) + b), b


def _reference(f, z0, n: int = 400):
    z = z0
    for _ in range(n):
        z = f(z)
    return z


@pytest.mark.parametrize("name", list(ALL))
def test_solvers_find_the_fixed_point(name):
    f, b = _cos_map()
    z0 = torch.zeros_like(b)
    sol = fixed_point(f, z0, ALL[name](tol=1e-10, max_iter=300))
    assert sol.converged
    torch.testing.assert_close(sol.value, _reference(f, z0), atol=1e-8, rtol=0)
    st = sol.stats
    assert st.iterations.shape == (3,) and st.converged.dtype == torch.bool
    assert st.abs_trace.shape == (st.num_evals, 3) == st.rel_trace.shape
    assert not st.diverged.any() and not st.nonfinite.any()
    assert (st.rel_residual <= 1e-10).all()


@pytest.mark.parametrize("name", ["plain", "nesterov", "anderson", "broyden"])
@pytest.mark.parametrize("stop", ["rel", "abs"])
def test_tolerance_is_honoured_and_iterations_are_minimal(name, stop):
    f, b = _cos_map()
    tol = 1e-6
    st = fixed_point(f, torch.zeros_like(b), ALL[name](tol=tol, stop=stop, max_iter=300)).stats
    trace = st.rel_trace if stop == "rel" else st.abs_trace
    final = st.rel_residual if stop == "rel" else st.abs_residual
    assert st.converged.all() and (final <= tol).all()
    for i in range(3):  # each sample stopped at the first evaluation below the tolerance
        k = int(st.iterations[i])
        assert k >= 2 and float(trace[k - 2, i]) > tol and float(trace[k - 1, i]) <= tol


@pytest.mark.parametrize("name", list(ALL))
def test_iteration_cap_is_honoured(name):
    f = lambda z: 0.99 * torch.tanh(z) + 1.0  # noqa: E731  (slow for every solver)
    sol = fixed_point(f, torch.zeros(2, 3, dtype=torch.float64), ALL[name](tol=1e-14, max_iter=4))
    st = sol.stats
    assert st.iterations.tolist() == [4, 4] and st.num_evals == 4
    assert not st.converged.any() and not st.failed.any() and not sol.converged
    assert torch.isfinite(sol.value).all()


@pytest.mark.parametrize("name", ["plain", "nesterov", "anderson", "broyden"])
def test_per_sample_convergence(name):
    rates = torch.tensor([[0.1], [0.8]], dtype=torch.float64)
    f = lambda z: rates * torch.tanh(z) + 1.0  # noqa: E731
    sol = fixed_point(f, torch.zeros(2, 4, dtype=torch.float64), ALL[name](tol=1e-9, max_iter=500))
    st = sol.stats
    assert st.converged.all()
    assert int(st.iterations[0]) < int(st.iterations[1])  # the easy sample stopped earlier
    # the early sample's value is its iterate at its own stop, still within its tolerance
    z = sol.value
    rel = (f(z) - z).norm(dim=1) / f(z).norm(dim=1)
    assert float(rel[0]) < 1e-7 and float(rel[1]) < 1e-7
    # its residual trace stays frozen after it stopped
    k = int(st.iterations[0])
    assert torch.all(st.abs_trace[k - 1 :, 0] == st.abs_trace[k - 1, 0])


@pytest.mark.parametrize("name", list(ALL))
def test_non_contractive_map_is_reported(name):
    f = lambda z: 2.0 * z + 1.0  # noqa: E731
    sol = fixed_point(f, torch.zeros(2, 3), ALL[name](tol=1e-6, max_iter=300))
    st = sol.stats
    assert torch.isfinite(sol.value).all()
    if name.startswith(("anderson", "broyden")):
        # secant methods may legitimately solve a linear map (z* = -1); otherwise: not converged
        if st.converged.all():
            torch.testing.assert_close(sol.value, torch.full((2, 3), -1.0), atol=1e-4, rtol=0)
        else:
            assert not st.converged.any()
        return
    assert not st.converged.any() and st.diverged.all()
    with pytest.raises(ConvergenceError, match="diverged"):
        fixed_point(f, torch.zeros(2, 3), ALL[name](tol=1e-6, max_iter=300), throw=True)


@pytest.mark.parametrize("name", ["plain", "nesterov"])
def test_divergence_of_plain_iteration_is_flagged_early(name):
    sol = fixed_point(lambda z: 2.0 * z + 1.0, torch.zeros(1, 3), ALL[name](max_iter=1000))
    assert sol.stats.diverged.all() and int(sol.stats.iterations[0]) < 60
    assert torch.isfinite(sol.value).all()


@pytest.mark.parametrize("name", list(ALL))
def test_nan_producing_map_is_flagged(name):
    calls = {"n": 0}

    def f(z):
        calls["n"] += 1
        out = 0.5 * z + 1.0
        if calls["n"] >= 3:  # sample 1 turns NaN from the third evaluation on
            out = out.clone()
            out[1] = float("nan")
        return out

    sol = fixed_point(f, torch.zeros(2, 4, dtype=torch.float64), ALL[name](tol=1e-8, max_iter=200))
    st = sol.stats
    assert st.nonfinite.tolist() == [False, True]
    assert st.converged.tolist() == [True, False]
    assert st.diverged[1] and torch.isfinite(sol.value).all()  # last finite iterate, flagged
    calls["n"] = 0
    with pytest.raises(ConvergenceError, match="NaN"):
        fixed_point(f, torch.zeros(2, 4, dtype=torch.float64), ALL[name](tol=1e-8, max_iter=200), throw=True)


def test_inf_map_is_flagged_not_returned():
    sol = fixed_point(lambda z: z * float("inf") + 1, torch.ones(2, 2), FixedPointIteration())
    assert sol.stats.nonfinite.all() and torch.isfinite(sol.value).all()


def test_anderson_singular_least_squares_does_not_crash():
    # a scalar state: the residual history has rank 1, so the unregularised Gram matrix is singular
    f = lambda z: 0.5 * torch.cos(z)  # noqa: E731
    sol = fixed_point(
        f,
        torch.zeros(3, 1, dtype=torch.float64),
        Anderson(regularization=0.0, memory=5, tol=1e-10, max_iter=100),
    )
    assert sol.converged
    torch.testing.assert_close(sol.value, f(sol.value), atol=1e-9, rtol=0)
    # identical residuals (a constant map after the first step): singular as well
    sol = fixed_point(lambda z: torch.ones_like(z), torch.zeros(2, 3), Anderson(regularization=0.0, tol=1e-6))
    assert sol.converged and torch.allclose(sol.value, torch.ones(2, 3))


def test_anderson_needs_fewer_iterations_than_plain_and_nesterov_helps():
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(32, 32, generator=gen, dtype=torch.float64))
    W = q @ torch.diag(torch.linspace(0.0, 0.97, 32, dtype=torch.float64)) @ q.T
    f = lambda z: z @ W.T + 1.0  # noqa: E731  symmetric, spectral radius 0.97
    z0 = torch.zeros(2, 32, dtype=torch.float64)
    its = {
        n: int(fixed_point(f, z0, ALL[n](tol=1e-8, max_iter=2000)).stats.iterations.max())
        for n in ("plain", "nesterov", "anderson", "broyden")
    }
    assert its["anderson"] < its["plain"] / 4
    assert its["broyden"] < its["plain"] / 4
    assert its["nesterov"] < its["plain"]


def test_damping_rescues_an_oscillating_map():
    f = lambda z: -1.2 * z + 1.0  # noqa: E731  plain iteration diverges, damped 0.5 contracts (-0.1)
    assert fixed_point(f, torch.zeros(1, 2), FixedPointIteration()).stats.diverged.all()
    sol = fixed_point(f, torch.zeros(1, 2), FixedPointIteration(damping=0.5, tol=1e-7))
    assert sol.converged and torch.allclose(sol.value, torch.full((1, 2), 1 / 2.2))


def test_tuple_and_complex_states():
    gen = torch.Generator().manual_seed(3)
    a = torch.randn(2, 3, dtype=torch.complex128, generator=gen)
    b = torch.randn(2, 1, 4, 4, dtype=torch.float64, generator=gen)

    def f(z):
        x, u = z
        return 0.5 * x * torch.exp(1j * u.mean(dim=(1, 2, 3)))[:, None] + a, 0.3 * torch.tanh(u) + b

    z0 = (torch.zeros_like(a), torch.zeros_like(b))
    for solver in (Anderson(tol=1e-10), FixedPointIteration(tol=1e-10, max_iter=300), Broyden(tol=1e-10)):
        sol = fixed_point(f, z0, solver)
        assert sol.converged and isinstance(sol.value, tuple)
        x, u = sol.value
        assert x.dtype == torch.complex128 and u.shape == b.shape
        fx, fu = f(sol.value)
        assert torch.allclose(fx, x, atol=1e-8) and torch.allclose(fu, u, atol=1e-8)


def test_invalid_inputs_raise_clear_errors():
    with pytest.raises(DTypeError):
        fixed_point(lambda z: z, [1.0, 2.0])
    with pytest.raises(ShapeError, match="batch"):
        fixed_point(lambda z: z, torch.tensor(1.0))
    with pytest.raises(ShapeError, match="structure of z0"):
        fixed_point(lambda z: z[:, :2], torch.zeros(2, 3))
    with pytest.raises(ShapeError, match="batch size"):
        fixed_point(lambda z: z, (torch.zeros(2, 3), torch.zeros(3, 3)))
    with pytest.raises(DeqirError, match="stop"):
        Anderson(stop="relative")
    with pytest.raises(DeqirError, match="damping"):
        FixedPointIteration(damping=1.5)


# --------------------------------------------------------------------------- stochastic maps
def _oder_like_map(seed: int = 0, frozen_blocks: list | None = None):
    """Consistent least squares with 12 blocks of rows; each call uses 4 random blocks (b/w scaling)."""
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(12, 5, 8, generator=gen, dtype=torch.float64)  # 12 blocks of 5 rows, 8 unknowns
    x_true = torch.randn(2, 8, generator=gen, dtype=torch.float64)
    y = torch.einsum("brn,sn->sbr", A, x_true)
    lip = float(torch.linalg.matrix_norm(A.reshape(60, 8), 2)) ** 2
    draw = torch.Generator().manual_seed(seed + 1)

    def f(z):
        blocks = (
            frozen_blocks[0]
            if frozen_blocks and frozen_blocks[0] is not None
            else torch.randperm(12, generator=draw)[:4]
        )
        Ab = A[blocks]
        r = torch.einsum("brn,sn->sbr", Ab, z) - y[:, blocks]
        grad = torch.einsum("brn,sbr->sn", Ab, r) * (12 / 4)
        return z - 0.25 / lip * grad

    return f, x_true


@pytest.mark.parametrize(
    "solver", [FixedPointIteration(tol=1e-9, max_iter=3000), Nesterov(tol=1e-9, max_iter=3000)]
)
def test_stochastic_map_with_plain_and_nesterov_iteration(solver):
    f, x_true = _oder_like_map()
    sol = fixed_point(StochasticMap(f), torch.zeros_like(x_true), solver)
    assert sol.converged
    torch.testing.assert_close(sol.value, x_true, atol=1e-6, rtol=0)


@pytest.mark.parametrize("cls", [Anderson, Broyden])
def test_anderson_and_broyden_refuse_a_stochastic_map_unless_frozen(cls):
    holder = [None]
    f, x_true = _oder_like_map(frozen_blocks=holder)

    @contextlib.contextmanager
    def freeze():
        holder[0] = torch.tensor([0, 3, 6, 9])
        try:
            yield
        finally:
            holder[0] = None

    z0 = torch.zeros_like(x_true)
    with pytest.raises(StochasticMapError, match="FixedPointIteration or Nesterov"):
        fixed_point(StochasticMap(f), z0, cls())
    with pytest.raises(DeqirError):  # the flag works on any callable
        fixed_point(f, z0, cls(), stochastic=True)
    with pytest.raises(StochasticMapError, match="freeze"):  # freezing needs a freeze()
        fixed_point(StochasticMap(f), z0, cls(), freeze=True)
    sol = fixed_point(StochasticMap(f, freeze=freeze), z0, cls(tol=1e-10, max_iter=300), freeze=True)
    assert sol.stats.frozen and sol.converged and holder[0] is None
    torch.testing.assert_close(sol.value, x_true, atol=1e-6, rtol=0)  # consistent data: same point
    sol = fixed_point(StochasticMap(f), z0, cls(allow_stochastic=True, max_iter=5))
    assert sol.stats.num_evals == 5


def test_default_solver_for_a_stochastic_map_is_plain_iteration():
    f, x_true = _oder_like_map()
    sol = fixed_point(StochasticMap(f), torch.zeros_like(x_true), adjoint=JacobianFree())
    assert sol.stats.solver == "FixedPointIteration"


# --------------------------------------------------------------------------- stabilisers & import
def test_spectral_norm_all_and_lipschitz_estimate():
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.ConvTranspose2d(4, 2, 3, padding=1),
        torch.nn.Flatten(),
        torch.nn.Linear(2 * 36, 36),
    )
    spectral_norm_all(net)
    spectral_norm_all(net)  # idempotent
    layers = [net[0], net[2], net[4]]
    assert all(parametrize.is_parametrized(m, "weight") for m in layers)
    assert all(len(m.parametrizations.weight) == 1 for m in layers)
    W = torch.diag(torch.tensor([0.3, 2.5, 1.0], dtype=torch.float64))
    lip = lipschitz_estimate(
        lambda z: torch.tanh(z) @ W, torch.zeros(2, 3, dtype=torch.float64), iterations=50
    )
    torch.testing.assert_close(lip, torch.full((2,), 2.5, dtype=torch.float64))


def test_import_is_cheap():
    code = "import sys, deqir.solvers; assert 'torch' not in sys.modules, 'torch imported eagerly'"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
