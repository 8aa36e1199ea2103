"""2-D parallel-beam CT with an exact, precomputed system matrix (Joseph's method).

Geometry (astra-toolbox's ``parallel`` geometry; also ``skimage.transform.radon(circle=False)``'s
whenever ``N`` and ``ceil(sqrt(2) * N)`` are both odd, e.g. 129: skimage puts the rotation centre
half a pixel off the image centre for even sizes):

* the image is ``N x N`` pixels of unit size, centred on the rotation axis; pixel ``(r, c)`` has
  centre ``x = c - (N - 1) / 2`` (rightwards) and ``y = (N - 1) / 2 - r`` (upwards);
* projection angle ``theta`` (degrees, the blocks of the operator; default ``num_angles``
  equispaced angles in ``[0, 180)``) integrates along the lines ``x cos(theta) + y sin(theta) = t``;
* ``num_detectors`` bins of unit width centred at ``t = d - (num_detectors - 1) / 2``; the default
  ``ceil(sqrt(2) * N)`` covers the image diagonal (725 bins at 512, 91 at 64, 46 at 32).

The system matrix uses Joseph's method (the same weights as astra-toolbox's ``linear`` projector):
every ray steps one pixel at a time along the image axis it is most aligned with, interpolates
linearly between the two nearest pixels across the other axis, and weights by the step length
``1 / max(|cos|, |sin|)``. It is built once with vectorised NumPy (under a second at 256 x 256 and
90 angles), cached in-process by geometry, and stored angle-major in CSR form (one row per
``(angle, detector)`` pair, int32 indices), so a subset of angles is a set of contiguous row
blocks and costs in proportion to its size:

* on the CPU, ``A`` runs SciPy's compiled CSR mat-vec kernel on each selected angle's rows, and
  ``A_adjoint`` scatters the same rows back with the CSC kernel (the very same arrays read as the
  transposed matrix), so the adjoint is the exact transpose and no second matrix is stored. Both
  run on one thread: a multi-threaded kernel per angle pays one thread barrier per angle, which
  on a loaded machine costs milliseconds each, and a single multi-threaded call on the whole
  matrix would not scale with the number of angles;
* on other devices both directions use ``torch.sparse`` CSR products per angle (the transposed
  per-angle matrices are built on first use).

Weights are kept in the operator's dtype; inputs of the other floating dtype use a cast copy of
the same weights, so the adjoint is exact in float32 and in float64 alike.

Example:
    >>> import torch
    >>> from deqir.physics.ct import ParallelBeamCT
    >>> ct = ParallelBeamCT(32, num_angles=12)
    >>> x = torch.zeros(1, 1, 32, 32)
    >>> x[..., 12:20, 12:20] = 1.0
    >>> y = ct.A(x)
    >>> tuple(y.shape), round(float(y[0, 0, 0].sum()), 3)  # every angle sees the whole mass
    ((1, 1, 12, 46), 64.0)
    >>> ct.adjointness_error(dtype=torch.float64) < 1e-12
    True
"""

from __future__ import annotations

import functools
import math
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from deqir.errors import DTypeError, InvalidValueError, unknown_name_message
from deqir.physics.base import Blocks, LinearOperator

FILTERS = ("ramp", "hann")
_CACHE_SIZE = 4  # at most this many geometries in the in-process cache of system matrices
_CACHE_NNZ = 64_000_000  # and at most this many stored weights (~0.5 GB in float32), newest kept


# --------------------------------------------------------------------------- system matrix
@dataclass(frozen=True)
class _System:
    """One geometry's system matrix, angle-major CSR (NumPy arrays, shared read-only)."""

    indptr: np.ndarray  # (num_angles * num_detectors + 1,) int32 or int64, global row pointers
    indices: np.ndarray  # (nnz,) pixel index r * N + c, sorted within each row
    data: np.ndarray  # (nnz,) weights in the requested dtype

    @property
    def nnz(self) -> int:
        return int(self.data.size)


_SYSTEMS: OrderedDict[tuple, _System] = OrderedDict()
_SYSTEMS_LOCK = threading.Lock()


def _system_matrix(n: int, num_detectors: int, angles_deg: np.ndarray, dtype: np.dtype) -> _System:
    """The cached system matrix of a geometry (built on first request)."""
    key = (n, num_detectors, angles_deg.astype(np.float64).tobytes(), np.dtype(dtype).str)
    with _SYSTEMS_LOCK:
        hit = _SYSTEMS.get(key)
        if hit is not None:
            _SYSTEMS.move_to_end(key)
            return hit
    system = _build_joseph(n, num_detectors, angles_deg, np.dtype(dtype))
    with _SYSTEMS_LOCK:
        _SYSTEMS[key] = system
        while len(_SYSTEMS) > 1 and (
            len(_SYSTEMS) > _CACHE_SIZE or sum(v.nnz for v in _SYSTEMS.values()) > _CACHE_NNZ
        ):
            _SYSTEMS.popitem(last=False)
    return system


def clear_cache() -> None:
    """Forget every cached system matrix (operators already built keep theirs).

    Example:
        >>> from deqir.physics.ct import clear_cache
        >>> clear_cache()
    """
    with _SYSTEMS_LOCK:
        _SYSTEMS.clear()


def _build_joseph(n: int, num_det: int, angles_deg: np.ndarray, dtype: np.dtype) -> _System:
    """Joseph's projector as angle-major CSR, computed in float64 and cast to ``dtype``."""
    max_nnz = 2 * n * num_det * len(angles_deg)  # at most two pixels per ray and step
    index_dtype = np.int32 if max(max_nnz, n * n) < 2**31 - 1 else np.int64
    half = (n - 1) / 2.0
    t = np.arange(num_det, dtype=np.float64) - (num_det - 1) / 2.0
    steps = np.arange(n, dtype=np.float64)
    steps_i = np.arange(n, dtype=index_dtype)
    counts_all, indices_all, data_all = [], [], []
    for theta in np.deg2rad(angles_deg.astype(np.float64)):
        c, s = math.cos(theta), math.sin(theta)
        rows_major = abs(c) >= abs(s)
        if rows_major:  # step over image rows r (y = half - r): column u where the ray crosses
            u = (t[:, None] - (half - steps)[None, :] * s) / c + half
            step = 1.0 / abs(c)
        else:  # step over image columns c (x = c - half): row u where the ray crosses
            u = half - (t[:, None] - (steps - half)[None, :] * c) / s
            step = 1.0 / abs(s)
        lo = np.floor(u)
        frac = u - lo
        lo = lo.astype(index_dtype)
        # entries per detector: rows-major in (step, k) order, which is sorted by pixel index;
        # columns-major in (k, step) order, sorted below. k = 0 -> pixel lo, k = 1 -> lo + 1.
        shape = (num_det, n, 2) if rows_major else (num_det, 2, n)
        cross = np.empty(shape, dtype=index_dtype)
        weight = np.empty(shape, dtype=np.float64)
        first = (slice(None), slice(None), 0) if rows_major else (slice(None), 0)
        second = (slice(None), slice(None), 1) if rows_major else (slice(None), 1)
        cross[first], cross[second] = lo, lo + 1
        np.multiply(1.0 - frac, step, out=weight[first])
        np.multiply(frac, step, out=weight[second])
        keep = (cross >= 0) & (cross < n) & (weight > 0)
        if rows_major:  # pixel r * n + cross
            pix = cross + (steps_i * n)[None, :, None]
        else:  # pixel cross * n + c: sort each detector row by pixel index; the two k-runs are
            # each monotone, so a stable (merge-based) sort is fast
            pix = cross * n + steps_i[None, None, :]
            key = np.where(keep, pix, n * n).reshape(num_det, 2 * n)
            order = np.argsort(key, axis=1, kind="stable")
            order += (np.arange(num_det, dtype=order.dtype) * (2 * n))[:, None]
            pix, weight, keep = pix.ravel()[order], weight.ravel()[order], keep.ravel()[order]
        keep = keep.reshape(num_det, 2 * n)
        counts_all.append(keep.sum(axis=1))
        indices_all.append(pix.reshape(num_det, 2 * n)[keep])
        data_all.append(weight.reshape(num_det, 2 * n)[keep].astype(dtype))
    counts = np.concatenate(counts_all)
    indptr = np.zeros(counts.size + 1, dtype=index_dtype)
    np.cumsum(counts, out=indptr[1:])
    return _System(indptr=indptr, indices=np.concatenate(indices_all), data=np.concatenate(data_all))


@functools.lru_cache(maxsize=1)
def _sparse_kernels():
    """SciPy's compiled CSR/CSC mat-vec kernels (accumulate in place), or ``None`` if unavailable."""
    try:
        from scipy.sparse import _sparsetools as st  # private but stable since SciPy 1.8
    except ImportError:  # pragma: no cover - depends on the SciPy version
        return None
    names = ("csr_matvec", "csr_matvecs", "csc_matvec", "csc_matvecs")
    if not all(hasattr(st, name) for name in names):  # pragma: no cover
        return None
    return st


def _sparse_csr(crow: torch.Tensor, col: torch.Tensor, val: torch.Tensor, size: tuple[int, int]):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(crow, col, val, size=size, check_invariants=False)


# --------------------------------------------------------------------------- operator
class ParallelBeamCT(LinearOperator):
    """2-D parallel-beam CT; the projection angles are the blocks.

    Images ``(B, 1, N, N)`` map to sinograms ``(B, 1, num_angles, num_detectors)``; a subset of
    angles gives ``(B, 1, len(blocks), num_detectors)`` at a cost proportional to its size. The
    adjoint is the exact transpose of the forward map (see the module docstring for the geometry
    and the projector).

    Args:
        image_size: side ``N`` of the square image in pixels (at least 2).
        num_angles: number of equispaced angles in ``[0, 180)`` degrees; ignored when ``angles``
            is given.
        num_detectors: detector bins of unit width; default ``ceil(sqrt(2) * image_size)``, which
            covers the image diagonal.
        angles: projection angles in degrees (1-D, finite, any order); overrides ``num_angles``.
        dtype: ``torch.float32`` or ``torch.float64``, the dtype of the stored weights (inputs of
            the other dtype are accepted and use a cast copy).
        device: where to keep the matrix (``.to(device)`` moves it later).

    Raises:
        InvalidValueError: ``image_size < 2``, ``num_angles < 1``, ``num_detectors < 1`` or
            non-finite or empty ``angles``.
        DTypeError: ``dtype`` is not float32 or float64.

    Example:
        >>> import torch
        >>> from deqir.physics import ParallelBeamCT
        >>> ct = ParallelBeamCT(64, num_angles=90)
        >>> x = torch.rand(2, 1, 64, 64)
        >>> ct.A(x).shape
        torch.Size([2, 1, 90, 91])
        >>> blocks = torch.arange(0, 90, 3)  # 30 of 90 angles
        >>> y = ct.A(x)
        >>> torch.allclose(ct.A(x, blocks), y[:, :, blocks], atol=1e-4)
        True
        >>> ct.fbp(y, filter="hann").shape
        torch.Size([2, 1, 64, 64])
    """

    block_dim = 2

    def __init__(
        self,
        image_size: int,
        num_angles: int = 90,
        num_detectors: int | None = None,
        angles: torch.Tensor | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ):
        super().__init__()
        n = _positive_int(image_size, "image_size", minimum=2)
        if angles is None:
            count = _positive_int(num_angles, "num_angles", minimum=1)
            angles_t = torch.arange(count, dtype=torch.float64) * (180.0 / count)
        else:
            angles_t = torch.as_tensor(angles).detach().to("cpu", torch.float64).flatten()
            if angles_t.numel() == 0:
                raise InvalidValueError("angles is empty: give at least one projection angle (degrees)")
            if not torch.isfinite(angles_t).all():
                raise InvalidValueError("angles contains NaN or infinite values; give finite degrees")
        det = (
            math.ceil(math.sqrt(2.0) * n)
            if num_detectors is None
            else _positive_int(num_detectors, "num_detectors", minimum=1)
        )
        if dtype not in (torch.float32, torch.float64):
            raise DTypeError(f"ParallelBeamCT stores its weights in float32 or float64; got dtype {dtype}")

        self.image_size = n
        self.num_detectors = det
        self.num_blocks = int(angles_t.numel())
        self.image_shape = (1, n, n)
        self.register_buffer("angles", angles_t, persistent=False)  # degrees, float64

        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        system = _system_matrix(n, det, angles_t.numpy(), np_dtype)
        # what the matrix was built from, for copies (buffer casts such as .float() leave it)
        self._geometry = (angles_t.numpy().copy(), np_dtype)
        self.nnz = system.nnz
        # angle-major CSR: rows a * num_detectors ... (a + 1) * num_detectors - 1 are angle a
        self.register_buffer("_indptr", torch.from_numpy(system.indptr), persistent=False)
        self.register_buffer("_indices", torch.from_numpy(system.indices), persistent=False)
        self.register_buffer("_values", torch.from_numpy(system.data), persistent=False)
        self._kernels: dict[Any, Any] = {}
        if device is not None:
            self.to(device)

    # ------------------------------------------------------------------ helpers
    def __getstate__(self) -> dict[str, Any]:
        """Pickles and copies carry the geometry, not the system matrix (680 MB at 256² and 720
        angles): :meth:`__setstate__` rebuilds it from the angles and dtype it was built from
        (from this process's cache when it has it), then casts it as the original was cast.
        Derived kernels are rebuilt lazily."""
        state = self.__dict__.copy()
        state["_kernels"] = {}
        buffers = dict(state["_buffers"])
        values = buffers.pop("_values")
        del buffers["_indptr"], buffers["_indices"]
        state["_buffers"] = buffers
        state["_values_dtype"] = values.dtype
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        dtype = state.pop("_values_dtype")
        self.__dict__.update(state)
        angles, np_dtype = self._geometry
        system = _system_matrix(self.image_size, self.num_detectors, angles, np_dtype)
        device = self.angles.device  # where the copy's buffers are (torch.load may remap them)
        self._buffers["_indptr"] = torch.from_numpy(system.indptr).to(device)
        self._buffers["_indices"] = torch.from_numpy(system.indices).to(device)
        self._buffers["_values"] = torch.from_numpy(system.data).to(device=device, dtype=dtype)

    @property
    def angles_deg(self) -> torch.Tensor:
        """The projection angles in degrees (float64, CPU copy)."""
        return self.angles.detach().cpu()

    def extra_repr(self) -> str:  # noqa: D102
        return (
            f"image_size={self.image_size}, num_angles={self.num_blocks}, "
            f"num_detectors={self.num_detectors}, nnz={self.nnz}"
        )

    def measurement_shape(self, blocks: Blocks = None) -> tuple[int, ...]:
        """``(1, n_selected, num_detectors)``."""
        b = self.as_blocks(blocks)
        count = self.num_blocks if b is None else int(b.numel())
        return (1, count, self.num_detectors)

    def _values_as(self, dtype: torch.dtype) -> torch.Tensor:
        return (
            self._values
            if self._values.dtype == dtype
            else self._kernel_cache(("values", dtype), lambda: self._values.to(dtype))
        )

    def _kernel_cache(self, key: tuple, make):
        # cached derived objects are valid for the current storage of the buffers only
        stamp = (self._values.data_ptr(), self._values.dtype, self._values.device, self._indices.data_ptr())
        if self._kernels.get("stamp") != stamp:
            self._kernels = {"stamp": stamp}
        if key not in self._kernels:
            self._kernels[key] = make()
        return self._kernels[key]

    def _angle_rows(self, a: int) -> tuple[torch.Tensor, slice]:
        """Angle ``a``'s local row pointers (starting at 0) and its slice of indices/values."""
        det = self.num_detectors
        ptr = self._indptr[a * det : (a + 1) * det + 1]
        start, end = int(ptr[0]), int(ptr[-1])
        return ptr - ptr[0], slice(start, end)

    def _forward_blocks(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """One ``(num_detectors, N*N)`` CSR tensor per angle (for devices other than the CPU)."""

        def make():
            vals, size, out = self._values_as(dtype), (self.num_detectors, self.image_size**2), []
            for a in range(self.num_blocks):
                crow, part = self._angle_rows(a)
                out.append(_sparse_csr(crow, self._indices[part], vals[part], size))
            return out

        return self._kernel_cache(("forward", dtype), make)

    def _adjoint_blocks(self, dtype: torch.dtype) -> list[torch.Tensor]:
        """One ``(N*N, num_detectors)`` CSR tensor per angle (for devices other than the CPU)."""

        def make():
            import scipy.sparse as sp

            vals = self._values_as(dtype).detach().cpu().numpy()
            idx = self._indices.cpu().numpy()
            n2, det, device, out = self.image_size**2, self.num_detectors, self._values.device, []
            for a in range(self.num_blocks):
                crow, part = self._angle_rows(a)
                m = sp.csr_matrix((vals[part], idx[part], crow.cpu().numpy()), shape=(det, n2))
                mt = m.T.tocsr()
                mt.sort_indices()
                index_dtype = self._indices.dtype
                out.append(
                    _sparse_csr(
                        torch.from_numpy(mt.indptr).to(device, index_dtype),
                        torch.from_numpy(mt.indices).to(device, index_dtype),
                        torch.from_numpy(mt.data).to(device),
                        (n2, det),
                    )
                )
            return out

        return self._kernel_cache(("adjoint", dtype), make)

    def _check_input(self, t: torch.Tensor, name: str) -> None:
        if t.dtype not in (torch.float32, torch.float64):
            raise DTypeError(
                f"ParallelBeamCT works in float32 or float64; got {name} of dtype {t.dtype} "
                "(use .float() or .double())"
            )
        if t.device != self._values.device:
            raise InvalidValueError(
                f"{name} is on {t.device} but the ParallelBeamCT matrix is on {self._values.device}; "
                f"move one of them (op.to({str(t.device)!r}) or {name}.to({str(self._values.device)!r}))"
            )

    # ------------------------------------------------------------------ the maps
    def _runs(self, blocks: torch.Tensor | None) -> tuple[int, list[tuple[int, int, int]]]:
        """Selected angles as runs of consecutive angles: ``(count, [(position, first, length)])``.

        A run of angles is a contiguous block of rows, handled by one kernel call.
        """
        if blocks is None:
            return self.num_blocks, [(0, 0, self.num_blocks)]
        b = blocks.numpy()
        cuts = [0, *(np.flatnonzero(np.diff(b) != 1) + 1).tolist(), int(b.size)]
        return int(b.size), [(cuts[i], int(b[cuts[i]]), cuts[i + 1] - cuts[i]) for i in range(len(cuts) - 1)]

    def _forward(self, x: torch.Tensor, blocks: torch.Tensor | None) -> torch.Tensor:
        self._check_input(x, "x")
        batch, n2, det = x.shape[0], self.image_size**2, self.num_detectors
        count, runs = self._runs(blocks)
        kernels = _sparse_kernels() if x.device.type == "cpu" else None
        if kernels is not None:  # SciPy's compiled CSR kernel on each run of consecutive angles
            vals, indptr, idx = self._numpy_arrays(x.dtype)
            # one single-vector kernel call per image: SciPy's multi-vector kernels
            # (csr_matvecs) loop over the vectors per nonzero and run several times slower
            xs = x.detach().reshape(batch, n2).contiguous().numpy()
            out = np.zeros((batch, count * det), dtype=xs.dtype)
            for k in range(batch):
                for pos, first, length in runs:
                    kernels.csr_matvec(
                        length * det,
                        n2,
                        indptr[first * det : (first + length) * det + 1],
                        idx,
                        vals,
                        xs[k],
                        out[k, pos * det : (pos + length) * det],
                    )
            return torch.from_numpy(out).view(batch, 1, count, det)
        mats = self._forward_blocks(x.dtype)
        xm = x.detach().reshape(batch, n2).t().contiguous()  # (N*N, B)
        out = torch.empty(count, det, batch, dtype=x.dtype, device=x.device)
        for pos, first, length in runs:
            for i in range(length):
                torch.mm(mats[first + i], xm, out=out[pos + i])
        return out.permute(2, 0, 1).unsqueeze(1).contiguous()

    def _adjoint(self, y: torch.Tensor, blocks: torch.Tensor | None) -> torch.Tensor:
        self._check_input(y, "y")
        batch, n, det = y.shape[0], self.image_size, self.num_detectors
        n2 = n * n
        count, runs = self._runs(blocks)
        kernels = _sparse_kernels() if y.device.type == "cpu" else None
        if kernels is not None:  # scatter the rows back onto the image: CSC kernel, same arrays
            vals, indptr, idx = self._numpy_arrays(y.dtype)
            ys = y.detach().reshape(batch, count * det).contiguous().numpy()
            out = np.zeros((batch, n2), dtype=ys.dtype)
            for k in range(batch):  # single-vector kernels, as in _forward
                for pos, first, length in runs:
                    kernels.csc_matvec(
                        n2,
                        length * det,
                        indptr[first * det : (first + length) * det + 1],
                        idx,
                        vals,
                        ys[k, pos * det : (pos + length) * det],
                        out[k],
                    )
            return torch.from_numpy(out).view(batch, 1, n, n)
        mats = self._adjoint_blocks(y.dtype)
        ys = y.detach().reshape(batch, count, det)
        out = torch.zeros(n2, batch, dtype=y.dtype, device=y.device)
        for pos, first, length in runs:
            for i in range(length):
                out.addmm_(mats[first + i], ys[:, pos + i].t())
        return out.t().reshape(batch, 1, n, n)

    def _numpy_arrays(self, dtype: torch.dtype):
        """NumPy views of the CPU buffers: values in ``dtype``, global row pointers, indices.

        Row pointers are absolute offsets into indices/values, so a slice of them is a valid
        row-pointer array for the matching rows when passed with the full indices/values.
        """

        def make():
            return self._values_as(dtype).numpy(), self._indptr.numpy(), self._indices.numpy()

        return self._kernel_cache(("numpy", dtype), make)

    # ------------------------------------------------------------------ reconstruction
    def fbp(self, y: torch.Tensor, filter: str = "ramp", blocks: Blocks = None) -> torch.Tensor:
        """Filtered back-projection, optionally from a subset of angles.

        Each projection is convolved (along the detector, zero-padded, through the FFT) with the
        spatial-domain ramp filter ``h[0] = 1/2``, ``h[n] = -2 / (pi n)^2`` for odd ``n``, 0 for
        even ``n`` (twice Kak & Slaney's discrete ramp, which has no DC offset), optionally
        multiplied in frequency by a Hann window ``(1 + cos(2 pi f)) / 2`` (``f`` in cycles per
        bin, zero at Nyquist); the filtered sinogram is back-projected with ``A_adjoint`` and
        scaled by ``pi / (2 * n_angles_used)``. The formula assumes angles spread evenly over
        180 degrees.

        Args:
            y: sinograms, either full ``(B, 1, num_angles, num_detectors)`` or already restricted
                to ``blocks`` ``(B, 1, len(blocks), num_detectors)``.
            filter: ``"ramp"`` or ``"hann"``.
            blocks: angles to use (``None``: all).

        Returns:
            Images ``(B, 1, N, N)`` in ``y``'s dtype.

        Raises:
            InvalidValueError: unknown ``filter``.
            ShapeError: ``y`` matches neither the full nor the restricted sinogram shape.

        Example:
            >>> import torch
            >>> from deqir.physics import ParallelBeamCT
            >>> ct = ParallelBeamCT(32, num_angles=60)
            >>> x = torch.zeros(1, 1, 32, 32)
            >>> x[..., 8:24, 8:24] = 1.0
            >>> rec = ct.fbp(ct.A(x))
            >>> round(float(rec[..., 12:20, 12:20].mean()), 1)
            1.0
        """
        name = str(filter).lower()
        if name not in FILTERS:
            raise InvalidValueError(unknown_name_message("FBP filter", str(filter), FILTERS))
        b = self.as_blocks(blocks)
        if (
            isinstance(y, torch.Tensor)
            and b is not None
            and y.dim() == 4
            and y.shape[2] == self.num_blocks
            and y.shape[2] != b.numel()
        ):
            self.check_measurement(y, None)
            y = self.restrict(y, b)
        self.check_measurement(y, b)
        self.check_finite(y, "sinogram y")
        used = self.num_blocks if b is None else int(b.numel())
        filtered = _filter_sinogram(y, name) * (math.pi / (2 * used))
        return self.A_adjoint(filtered, b)


def _filter_sinogram(y: torch.Tensor, name: str) -> torch.Tensor:
    """Convolve every projection with the (windowed) ramp filter along the last axis."""
    det = y.shape[-1]
    size = max(64, 1 << math.ceil(math.log2(2 * det)))  # zero padding against circular wrap
    kernel = _ramp_response(size, name, y.dtype, y.device)
    spec = torch.fft.rfft(y, n=size, dim=-1) * kernel
    return torch.fft.irfft(spec, n=size, dim=-1)[..., :det]


def _ramp_response(size: int, name: str, dtype: torch.dtype, device) -> torch.Tensor:
    """Real frequency response (``size // 2 + 1`` bins) of the spatial-domain ramp filter."""
    n = np.concatenate([np.arange(0, size // 2 + 1), np.arange(-(size // 2) + 1, 0)])  # circular
    h = np.zeros(size, dtype=np.float64)
    h[0] = 0.25
    odd = n % 2 == 1
    h[odd] = -1.0 / (np.pi * n[odd]) ** 2
    response = 2.0 * np.real(np.fft.rfft(h))
    if name == "hann":
        f = np.fft.rfftfreq(size)  # cycles per bin, 0 .. 0.5
        response *= 0.5 * (1.0 + np.cos(2.0 * np.pi * f))
    return torch.as_tensor(response, dtype=dtype, device=device)


def _positive_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        else:
            raise InvalidValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    if int(value) < minimum:
        raise InvalidValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


__all__ = ["FILTERS", "ParallelBeamCT", "clear_cache"]
