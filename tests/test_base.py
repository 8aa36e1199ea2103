"""The pieces every operator shares: samplers, noise, composition, registry, import cost."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from deqir.errors import InvalidValueError, ShapeError
from deqir.physics.noise import GaussianNoise
from deqir.physics.registry import build_operator
from deqir.physics.sampling import BlockSampler


def test_uniform_sampler_is_seeded_sorted_and_unique():
    a = [BlockSampler(90, 30, seed=3).sample() for _ in range(1)][0]
    b = BlockSampler(90, 30, seed=3).sample()
    c = BlockSampler(90, 30, seed=4).sample()
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.numel() == 30 and torch.equal(a, a.unique())


def test_sampler_draws_fresh_minibatches():
    s = BlockSampler(90, 30, seed=0)
    assert not torch.equal(s.sample(), s.sample())


def test_stratified_sampler_spreads_over_groups():
    s = BlockSampler(90, 30, strategy="stratified", groups=5, seed=0)
    for _ in range(10):
        idx = s.sample()
        assert idx.numel() == 30
        per_group = torch.bincount(idx // 18, minlength=5)
        assert torch.equal(per_group, torch.full((5,), 6))
        offsets = (idx % 18).reshape(5, 6)
        assert (offsets == offsets[0]).all()  # same offsets in every group


@pytest.mark.parametrize("strategy,groups", [("uniform", None), ("stratified", 5)])
def test_sampler_inclusion_probability_is_w_over_b(strategy, groups):
    s = BlockSampler(90, 30, strategy=strategy, groups=groups, seed=1)
    counts = torch.zeros(90)
    draws = 3000
    for _ in range(draws):
        counts[s.sample()] += 1
    freq = counts / draws
    assert (freq - 1 / 3).abs().max() < 0.05


def test_sampler_state_round_trip_reproduces_draws():
    s = BlockSampler(90, 30, seed=2)
    s.sample()
    state = s.state_dict()
    first = s.sample()
    s.load_state_dict(state)
    assert torch.equal(s.sample(), first)


def test_sampler_rejects_bad_settings():
    with pytest.raises(InvalidValueError, match="did you mean 'stratified'"):
        BlockSampler(90, 30, strategy="stratifed")
    with pytest.raises(InvalidValueError, match="between 1 and the number of blocks"):
        BlockSampler(10, 11)
    with pytest.raises(InvalidValueError, match="dividing both"):
        BlockSampler(90, 30, strategy="stratified", groups=4)


def test_noise_by_snr_is_exact_per_sample():
    y = torch.randn(3, 1, 20, 40)
    noisy = GaussianNoise(snr_db=50)(y, generator=torch.Generator().manual_seed(0))
    snr = 20 * torch.log10(y.flatten(1).norm(dim=1) / (noisy - y).flatten(1).norm(dim=1))
    torch.testing.assert_close(snr, torch.full((3,), 50.0))


def test_noise_by_sigma_has_that_level_for_real_and_complex():
    gen = torch.Generator().manual_seed(0)
    for y in (torch.zeros(1, 1, 200, 200), torch.zeros(1, 1, 200, 200, dtype=torch.complex64)):
        e = GaussianNoise(sigma=0.1)(y, generator=gen)
        assert e.abs().pow(2).mean().sqrt().item() == pytest.approx(0.1, rel=0.02)


def test_noise_needs_exactly_one_level():
    with pytest.raises(InvalidValueError):
        GaussianNoise()
    with pytest.raises(InvalidValueError):
        GaussianNoise(sigma=0.1, snr_db=30)


def test_composition_is_exact_and_checks_shapes():
    blur = build_operator("blur", image_size=16, kernel_size=5, sigma=1.0)
    ct = build_operator("ct", image_size=16, num_angles=12)
    both = ct @ blur
    assert both.num_blocks == 12
    x = torch.rand(2, 1, 16, 16, dtype=torch.float64)
    torch.testing.assert_close(both.A(x), ct.A(blur.A(x)))
    assert both.adjointness_error(dtype=torch.float64) < 1e-10
    with pytest.raises(ShapeError, match="cannot compose"):
        blur @ ct


def test_unknown_operator_name_suggests_the_closest():
    with pytest.raises(InvalidValueError, match="did you mean 'mri_single'"):
        build_operator("mri_singel")


def test_import_is_light():
    """`import deqir` and its core layers pull in no heavy optional package."""
    code = (
        "import sys, torch; import deqir, deqir.physics, deqir.physics.base, deqir.physics.registry;"
        "heavy = {'scipy', 'skimage', 'matplotlib', 'pydicom', 'nibabel', 'h5py', 'astra', 'typer'};"
        "print(sorted(heavy & set(m.split('.')[0] for m in sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# Each layer knows only the layers below it (DESIGN.md): module -> packages of deqir it may not
# import, anywhere in its files (function-level imports included).
_SHELL = {"train", "bench", "data", "cli", "demo", "reconstruct", "figures"}
_FORBIDDEN = {
    "errors": _SHELL | {"physics", "priors", "solvers", "methods", "storage", "metrics"},
    "storage": _SHELL | {"physics", "priors", "solvers", "methods", "metrics"},
    "metrics": _SHELL | {"physics", "priors", "solvers", "methods"},
    "physics": _SHELL | {"priors", "solvers", "methods"},
    "priors": _SHELL | {"physics", "solvers", "methods"},
    "solvers": _SHELL | {"physics", "priors", "methods"},
    "methods": _SHELL,
}


def _deqir_imports(path, package: str = "deqir") -> set[str]:
    """The top-level parts of deqir a file imports (``deqir.X...`` -> ``X``); ``package`` is the
    file's own package, against which relative imports are resolved."""
    import ast

    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # from . import x / from ..train import y
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # from deqir import train: the imported names are the parts
            names = [f"{base}.{alias.name}" for alias in node.names] if base == "deqir" else [base]
        else:
            continue
        found |= {n.split(".")[1] for n in names if n.startswith("deqir.")}
    return found


def test_layers_import_only_the_layers_below():
    from pathlib import Path

    import deqir

    root = Path(deqir.__file__).parent
    crossings = []
    for layer, forbidden in _FORBIDDEN.items():
        files = (
            [root / f"{layer}.py"]
            if (root / f"{layer}.py").is_file()
            else sorted((root / layer).rglob("*.py"))
        )
        assert files, layer
        for f in files:
            package = ".".join(("deqir", *f.relative_to(root).parent.parts))
            bad = _deqir_imports(f, package) & forbidden
            crossings += [f"{f.relative_to(root)} imports deqir.{b}" for b in sorted(bad)]
    assert not crossings, crossings


def test_layer_check_sees_function_level_package_and_relative_imports(tmp_path):
    f = tmp_path / "m.py"
    f.write_text(
        "def g():\n    from deqir.train.checkpoint import load_weights\n    import deqir.bench.common\n"
    )
    assert _deqir_imports(f) == {"train", "bench"}
    f.write_text("from deqir import train, errors\n")
    assert _deqir_imports(f) == {"train", "errors"}
    f.write_text("from ..data import splits\nfrom . import dncnn\n")
    assert _deqir_imports(f, "deqir.priors") == {"data", "priors"}
