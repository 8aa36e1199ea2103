"""``deqir bench oder_finetunes``: the CT fine-tuning experiments against TV, on the test split.

Issue 6's one unmet target is ODER minus TV on CT (``ct_oder_minus_tv_db`` of ``deqir bench
oder``; ``sigma_implicit`` below became the shipped recipe).
"Shipped" below means what was shipped when these experiments ran: the first recipe's prior and pair
(``oder_ct_*_first`` now). ``make oder-finetunes`` fine-tunes that CT pair (ODER, w = 30 of 90 angles, and
RED(DEQ)) further, each pair alike (``configs/oder_ct_{w30,red_deq}_{variant}.yaml``): ``more``
with its own settings (the control: a fresh optimiser and schedule alone), ``nosn`` without
spectral normalisation, ``k20`` with a 20-step undamped phantom gradient, ``implicit`` with the
implicit gradient. ``implicit_full`` (``make oder-implicit-full``) is not a continuation: the
whole 900-step fine-tuning from the pretrained prior, as the shipped pair's, with the implicit
gradient instead of the phantom one. ``tau0025``, ``tau005``, ``tau03``, ``tau06`` (``make
oder-tau``) are ODER alone (no RED(DEQ) run): the control with the prior weight τ set to 0.0025,
0.005, 0.03 or 0.06 instead of the shipped 0.0097; ``scalars``, the control with the step and τ
learned at 100 times the network's rate (``train.scalar_lr_factor``). ``lr1e3_600``,
``tau03_lr1e3``, ``dilated``, ``dilated7`` (``make oder-from-prior``) are ODER alone, not
continuations: 600 fine-tuning steps from a pretrained prior at the learning rate 1e-3, from the
shipped prior with τ starting at 0.01 as the shipped ODER's (the control) and at 0.03, and from a
prior with a wider receptive field (a dilated DnCNN: 21 × 21 pixels at the shipped depth 5, 45 × 45
at depth 7; the shipped one sees 11 × 11) pretrained as a denoiser first, on 64 × 64 patches (the
shipped prior: 40 × 40). ``lr1e3_600_implicit`` (``make oder-from-prior-implicit``) continues
``lr1e3_600``'s best weights for 300 steps with the implicit gradient. ``lr1e3_600_pair`` and
``lr1e3_600_implicit_pair`` are the same two ODER runs, each with a RED(DEQ) trained the same way
(``configs/oder_ct_red_deq_lr1e3_600{,_implicit}.yaml``, ``make oder-from-prior-pair``), so RED(DEQ)
minus ODER can be read for that recipe. ``sigma`` and ``sigma_implicit`` (``make oder-sigma-prior``)
are the pairs of ``lr1e3_600_pair`` and ``lr1e3_600_implicit_pair`` fine-tuned from a prior
pretrained on noise levels 0.01 to 0.05 instead of 0 to 0.1. Their validation curves are in
``results/oder_ct_finetune_curves.json`` (``implicit_full``'s in
``results/oder_ct_implicit_full_curves.json``, the τ runs' in ``results/oder_ct_tau_curves.json``,
the runs from a prior in ``results/oder_ct_from_prior_curves.json``, ``lr1e3_600_implicit``'s in
``results/oder_ct_from_prior_implicit_curves.json``, the four pairs' in
``results/oder_ct_sigma_curves.json``; ``deqir curves``); this bench tests
their best weights (``runs/<name>/weights/best.safetensors``) exactly as ``deqir bench oder`` tests
the shipped pair: 128², 90 angles, 50 dB, FBP start, Nesterov with the trained iterations, ODER with
fresh stratified minibatches of 30 then :data:`~deqir.bench.oder.TEST_AVERAGE` averaged iterations,
RED(DEQ) with all angles; TV's λ tuned on the first 4 validation images. The ``shipped`` variant is
the pair these experiments started from, the first recipe's (``configs/oder_ct_{w30,red_deq}.yaml``,
shipped as ``oder_ct_*_first``; the reports saved before the headline pair moved to the recipe of
``sigma_implicit`` repeat ``deqir bench oder``'s rows of that time).

Summary, for each variant whose runs exist (the others are listed in ``config.missing``; an
ODER-only variant has no RED(DEQ) keys):

- ``ct_oder_minus_tv_{variant}_db`` (with ``_se_db`` and ``_by_source``): ODER minus TV, per
  test image, averaged;
- ``ct_snr_gap_{variant}_db`` (with ``_se_db``): RED(DEQ) minus ODER on test;
  ``ct_val_snr_gap_{variant}_db`` on the whole validation split;
- ``ct_snr_{variant}_oder_w30``, ``ct_snr_{variant}_red_deq``: mean test SNR (dB);
- ``ct_snr_{variant}_oder_w30_noise_free`` and ``ct_oder_noise_free_minus_tv_{variant}_db`` (with
  ``_se_db``): ODER from noise-free measurements of the test images (its FBP start from those,
  the same solver), alone and against TV from the 50 dB ones: how much ODER loses to the
  measurement noise, against its gap to TV (not with ``--quick``; TV is not run on noise-free data).

And ``gradient_{phantom_3,phantom_20,implicit_1e-3}_{cosine,norm_ratio}``: how the training
gradients the variants use compare with the exact implicit gradient (:func:`gradient_agreement`,
the shipped RED(DEQ) on 2 validation images), and ``gradient_exact_{converged,iterations,
rel_residual,tol}``: whether that reference's adjoint solve reached its tolerance (not computed
when every variant picked with ``only`` is ODER-only).

And ``priors``: the shipped pretrained prior and those of the variants that start from another one
(:data:`VARIANT_PRIORS`), as denoisers of the test images (:func:`prior_noise_response`): the residual
on the clean images (the RED prior's pull at the truth) and the error left by each of a few small
noise levels, relative to the noise.

``config.runs`` records each run's end of training (its ``metrics.json``: steps, best validation
PSNR), or that it has not finished, and the shipped pair's validation PSNR (its sidecar).

The splits run in two worker processes (one thread each). ``--quick``: 2 test images, no
validation split, no TV, no gradient comparison.

Example:
    $ deqir bench oder_finetunes --json results/oder_finetunes.json
"""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any

import torch

from deqir.bench.common import BenchReport, load_shipped, paired_gap, run_jobs, snr_bars_by_source
from deqir.bench.oder import shipped_name

SOURCE = "ct_phantoms+brain"
W = 30  # ODER's minibatch: 30 of 90 angles
#: variant -> (ODER run, RED(DEQ) run or ``None`` for an ODER-only experiment); ``shipped`` is the
#: pair these experiments started from, the first recipe's (shipped as ``oder_ct_*_first`` since the
#: headline pair moved to the recipe of ``sigma_implicit``: :data:`deqir.bench.oder.SHIPPED_FROM`).
VARIANTS: dict[str, tuple[str, str | None]] = {
    "shipped": ("oder_ct_w30", "oder_ct_red_deq"),
    "more": ("oder_ct_w30_more", "oder_ct_red_deq_more"),
    "nosn": ("oder_ct_w30_nosn", "oder_ct_red_deq_nosn"),
    "k20": ("oder_ct_w30_k20", "oder_ct_red_deq_k20"),
    "implicit": ("oder_ct_w30_implicit", "oder_ct_red_deq_implicit"),
    "implicit_full": ("oder_ct_w30_implicit_full", "oder_ct_red_deq_implicit_full"),
    "scalars": ("oder_ct_w30_scalars", None),
    "tau0025": ("oder_ct_w30_tau0025", None),
    "tau005": ("oder_ct_w30_tau005", None),
    "tau03": ("oder_ct_w30_tau03", None),
    "tau06": ("oder_ct_w30_tau06", None),
    "lr1e3_600": ("oder_ct_w30_lr1e3_600", None),
    "tau03_lr1e3": ("oder_ct_w30_tau03_lr1e3", None),
    "dilated": ("oder_ct_w30_dilated", None),
    "dilated7": ("oder_ct_w30_dilated7", None),
    "lr1e3_600_implicit": ("oder_ct_w30_lr1e3_600_implicit", None),
    "lr1e3_600_pair": ("oder_ct_w30_lr1e3_600", "oder_ct_red_deq_lr1e3_600"),
    "lr1e3_600_implicit_pair": ("oder_ct_w30_lr1e3_600_implicit", "oder_ct_red_deq_lr1e3_600_implicit"),
    "sigma": ("oder_ct_w30_sigma", "oder_ct_red_deq_sigma"),
    "sigma_implicit": ("oder_ct_w30_sigma_implicit", "oder_ct_red_deq_sigma_implicit"),
}


def available_variants(
    runs_dir: str | Path = "runs", only: list[str] | None = None
) -> tuple[dict[str, tuple[str, str | None]], list[str]]:
    """The variants (of ``only``, default all) whose runs, and prior run for a variant of
    :data:`VARIANT_PRIORS`, have best weights in ``runs_dir`` (``shipped`` always), and the names
    of the missing runs, each once.

    Example:
        >>> found, missing = available_variants("no/such/folder")
        >>> list(found), missing[:2]
        (['shipped'], ['oder_ct_w30_more', 'oder_ct_red_deq_more'])
        >>> available_variants("no/such/folder", only=["tau03"])
        ({'shipped': ('oder_ct_w30', 'oder_ct_red_deq')}, ['oder_ct_w30_tau03'])
    """
    from deqir.errors import InvalidValueError

    if only is not None and not only:
        raise InvalidValueError("--only names no variant; name some or leave the option out")
    unknown = sorted(set(only or []) - set(VARIANTS))
    if unknown:
        raise InvalidValueError(f"--only: unknown variants {unknown}; choose from {sorted(VARIANTS)}")
    found, missing = {}, []
    for variant, pair in VARIANTS.items():
        if only is not None and variant not in only and variant != "shipped":
            continue
        if variant == "shipped":
            found[variant] = pair
            continue
        # its runs, and the prior it starts from when prior_rows tests that one too
        names = [n for n in (*pair, VARIANT_PRIORS.get(variant)) if n is not None]
        absent = [n for n in names if not (Path(runs_dir) / n / "weights" / "best.safetensors").is_file()]
        if not absent:
            found[variant] = pair
        missing += absent
    return found, list(dict.fromkeys(missing))


def run_status(runs_dir: str | Path, names) -> dict[str, dict[str, Any]]:
    """For each run, what its ``metrics.json`` says of the end of its training (steps, best
    validation PSNR, training seconds when recorded) and the step and τ of its best weights
    (:func:`learned_scalars`), or ``{"finished": False}`` when it has no metrics (still training,
    or stopped).

    Example:
        >>> run_status("no/such/folder", ["oder_ct_w30_nosn"])
        {'oder_ct_w30_nosn': {'finished': False}}
    """
    import json

    out: dict[str, dict[str, Any]] = {}
    for name in names:
        path = Path(runs_dir) / name / "metrics.json"
        try:
            metrics = json.loads(path.read_text())
            out[name] = {"finished": True, "step": metrics["step"], "best_val_psnr": metrics["best_val_psnr"]}
            if "seconds" in metrics:
                out[name]["train_seconds"] = metrics["seconds"]
        except (OSError, ValueError, KeyError, TypeError):
            out[name] = {"finished": False}
            continue
        out[name] |= learned_scalars(Path(runs_dir) / name / "weights" / "best.safetensors")
    return out


def learned_scalars(path: str | Path) -> dict[str, float]:
    """The step and prior weight τ in a RED method's weights file (its softplus-coded
    ``raw_parameters``), or ``{}`` when the file has none or cannot be read.

    Example:
        >>> from deqir.bench.common import WEIGHTS_DIR
        >>> scalars = learned_scalars(WEIGHTS_DIR / "oder_ct_w30_first.safetensors")
        >>> {k: round(v, 4) for k, v in scalars.items()}
        {'learned_step': 1.572, 'learned_tau': 0.0097}
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.get_tensor("raw_parameters")
    except Exception:  # no such file or key, or corrupt: nothing to report
        return {}
    step, tau = torch.nn.functional.softplus(raw.double()).tolist()
    return {"learned_step": step, "learned_tau": tau}


#: variant -> the pretrained prior its runs were fine-tuned from, when not the shipped one; its
#: response to small noise is reported next to the shipped prior's (:func:`prior_noise_response`).
VARIANT_PRIORS: dict[str, str] = {"sigma": "oder_ct_prior_sigma", "sigma_implicit": "oder_ct_prior_sigma"}
PRIOR_SIGMAS = (0.0025, 0.005, 0.01, 0.02)  # noise added to the test images


def prior_noise_response(denoiser, x: torch.Tensor, sigmas=PRIOR_SIGMAS, seed: int = 0) -> dict[str, Any]:
    """How a pretrained prior ``denoiser`` treats the images ``x`` and small noise on them: its
    residual on the clean images relative to them (``clean_residual``: mean of ‖x − D(x)‖ / ‖x‖;
    the RED prior's pull at the truth) and, for each σ of ``sigmas``, its output's error relative
    to the noise added (``error_over_noise``: mean of ‖D(x + n) − x‖ / ‖n‖; below 1 it removes
    noise, above 1 its bias outweighs the noise).

    Example:
        >>> out = prior_noise_response(lambda v: v, torch.rand(2, 1, 8, 8), sigmas=(0.01,))
        >>> out["clean_residual"], round(out["error_over_noise"]["0.01"], 6)
        (0.0, 1.0)
    """
    g = torch.Generator().manual_seed(seed)

    def norms(t: torch.Tensor) -> torch.Tensor:
        return t.flatten(1).double().norm(dim=1)

    with torch.no_grad():
        out: dict[str, Any] = {"clean_residual": float((norms(x - denoiser(x)) / norms(x)).mean())}
        out["error_over_noise"] = {}
        for sigma in sigmas:
            noise = sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)
            out["error_over_noise"][f"{sigma:g}"] = float(
                (norms(denoiser(x + noise) - x) / norms(noise)).mean()
            )
    return out


def prior_rows(variants, runs_dir: str | Path = "runs", count: int | None = None) -> dict[str, dict]:
    """:func:`prior_noise_response` of the shipped prior and of the priors of :data:`VARIANT_PRIORS`
    that ``variants`` use (read from ``runs_dir``), on ``count`` test images (``None``: all).

    Example:
        >>> list(prior_rows({"shipped": None}, count=1))  # doctest: +SKIP
        ['oder_ct_prior']
    """
    from deqir.bench.common import split_images
    from deqir.train.report import load_run_model

    torch.set_num_threads(1)
    x = split_images(SOURCE, "test", count)
    names = ["oder_ct_prior"] + sorted({VARIANT_PRIORS[v] for v in variants if v in VARIANT_PRIORS})
    out = {}
    for name in names:
        net = _load_first(name) if name == "oder_ct_prior" else load_run_model(Path(runs_dir) / name)
        out[name] = prior_noise_response(getattr(net, "network", net).eval(), x)
    return out


def shipped_status() -> dict[str, dict[str, Any]]:
    """For the shipped pair, the validation PSNR its weights were exported with (their sidecar).

    Example:
        >>> shipped_status()["oder_ct_w30"]["best_val_psnr"] > 40  # doctest: +SKIP
        True
    """
    from deqir.bench.common import WEIGHTS_DIR
    from deqir.train.checkpoint import read_sidecar

    out: dict[str, dict[str, Any]] = {}
    for name in VARIANTS["shipped"]:
        path = WEIGHTS_DIR / f"{shipped_name(name)}.safetensors"
        metrics = (read_sidecar(path) or {}).get("metrics") or {}
        out[name] = (
            {"shipped": True}
            | ({"best_val_psnr": metrics["val_psnr"]} if "val_psnr" in metrics else {})
            | learned_scalars(path)
        )
    return out


def _load_first(name: str):
    """The shipped weights of a first-recipe run (``oder_ct_w30`` -> ``oder_ct_w30_first``)."""
    return load_shipped(shipped_name(name))


def _loader(runs_dir: str | Path):
    from deqir.train.report import load_run_model

    shipped = set(VARIANTS["shipped"])
    return lambda name: _load_first(name) if name in shipped else load_run_model(Path(runs_dir) / name)


def split_rows(
    split: str,
    count: int | None,
    variants: dict,
    load=None,
    runs_dir: str | Path = "runs",
    size: int = 128,
    noise_free: bool = False,
) -> dict[str, torch.Tensor]:
    """Per-image SNR of every variant's ODER (key ``{variant}|oder_w30``) and RED(DEQ)
    (``{variant}|red_deq``, none for an ODER-only variant) on ``count`` images of ``split``
    (``None``: all), each with its own solver as trained; the models from ``load(name)``
    (default: shipped or ``runs_dir/name``). ``noise_free``: also each ODER from noise-free
    measurements of the same images (``{variant}|oder_w30_noise_free``; a fresh model, so its
    minibatch draws are the noisy row's), after all the other rows, which it leaves unchanged."""
    from deqir.bench import oder
    from deqir.bench.oder_restart import ct_split
    from deqir.metrics import compute_metrics

    load = load or _loader(runs_dir)
    op, x, y, x0 = ct_split(split, count, size)
    jobs = []
    for variant, (oder_name, red_name) in variants.items():
        for row, name, w in (("oder_w30", oder_name, W), ("red_deq", red_name, None)):
            if name is None:  # an ODER-only experiment
                continue
            model = load(name)
            average = oder.TEST_AVERAGE if w is not None else None
            solve = partial(oder._reconstruct_as_tested, model, w, model.max_iter, average, op, y, x0)
            jobs.append((f"{variant}|{row}", solve))
    if noise_free:
        clean = op.A(x)
        clean_x0 = oder._init(op, clean, "fbp")
        for variant, (oder_name, _) in variants.items():
            model = load(oder_name)
            solve = partial(
                oder._reconstruct_as_tested, model, W, model.max_iter, oder.TEST_AVERAGE, op, clean, clean_x0
            )
            jobs.append((f"{variant}|oder_w30_noise_free", solve))
    outs = run_jobs(jobs, f"ct {split}")
    return {k: compute_metrics(v[0].clamp(0, 1), x)["snr"].flatten().double() for k, v in outs.items()}


def summarise(per_image: dict[str, dict[str, torch.Tensor]], groups: dict[str, list[int]]) -> dict[str, Any]:
    """The summary keys of the module docstring from per-image SNRs (``per_image[split][key]``,
    TV under ``per_image["test"]["tv"]``) and the test images' sources (``groups``).

    Example:
        >>> t = torch.tensor
        >>> snr = {"test": {"a|oder_w30": t([3.0, 1.0]), "a|red_deq": t([2.0, 2.0]), "tv": t([2.0, 1.0])}}
        >>> s = summarise(snr, {"x": [0], "y": [1]})
        >>> s["ct_oder_minus_tv_a_db"], s["ct_snr_gap_a_db"], s["ct_oder_minus_tv_a_by_source"]["y"]["db"]
        (0.5, 0.0, 0.0)
    """
    from deqir.bench.oder import gap_by_source

    s: dict[str, Any] = {}
    test, val = per_image.get("test", {}), per_image.get("val", {})
    variants = sorted({k.split("|")[0] for k in test if "|" in k})
    for v in variants:
        mini, full = test.get(f"{v}|oder_w30"), test.get(f"{v}|red_deq")
        oder_only = v in VARIANTS and VARIANTS[v][1] is None
        if mini is None or (full is None and not oder_only):  # a pair's partner missing: no keys
            continue
        s[f"ct_snr_{v}_oder_w30"] = float(mini.mean())
        clean = test.get(f"{v}|oder_w30_noise_free")
        if clean is not None:
            s[f"ct_snr_{v}_oder_w30_noise_free"] = float(clean.mean())
            if "tv" in test:
                s[f"ct_oder_noise_free_minus_tv_{v}_db"], s[f"ct_oder_noise_free_minus_tv_{v}_se_db"] = (
                    paired_gap(clean, test["tv"])
                )
        if full is not None:  # else an ODER-only experiment
            s[f"ct_snr_{v}_red_deq"] = float(full.mean())
            s[f"ct_snr_gap_{v}_db"], s[f"ct_snr_gap_{v}_se_db"] = paired_gap(full, mini)
        if f"{v}|oder_w30" in val and f"{v}|red_deq" in val:
            s[f"ct_val_snr_gap_{v}_db"] = float((val[f"{v}|red_deq"] - val[f"{v}|oder_w30"]).mean())
        if "tv" in test:
            s[f"ct_oder_minus_tv_{v}_db"], s[f"ct_oder_minus_tv_{v}_se_db"] = paired_gap(mini, test["tv"])
            s[f"ct_oder_minus_tv_{v}_by_source"] = gap_by_source(mini, test["tv"], groups)
    return s


#: Training gradients compared with the exact implicit one (attributes of the RED method).
GRADIENTS = {
    "phantom_3": {"adjoint_name": "phantom", "phantom_steps": 3, "phantom_damping": 0.5},
    "phantom_20": {"adjoint_name": "phantom", "phantom_steps": 20, "phantom_damping": 1.0},
    "implicit_1e-3": {"adjoint_name": "implicit", "backward_tol": 1e-3, "backward_max_iter": 100},
}
EXACT_GRADIENT = {"adjoint_name": "implicit", "backward_tol": 1e-7, "backward_max_iter": 3000}
GRADIENT_ITERATIONS = 300  # forward Nesterov iterations: near the fixed point the gradients assume


def gradient_agreement(
    name: str = "oder_ct_red_deq", count: int = 2, load=_load_first, size: int = 128
) -> dict[str, dict[str, float]]:
    """How each training gradient of :data:`GRADIENTS` compares with the exact implicit gradient
    (:data:`EXACT_GRADIENT`): cosine and norm ratio of the network-parameter gradients of the
    training loss (MSE) of model ``name`` with all angles (a deterministic map), on ``count``
    validation images, each forward solved by Nesterov with :data:`GRADIENT_ITERATIONS` iterations.
    ``out["exact"]`` says how far the reference's adjoint solve went: the share of images whose
    solve reached the tolerance, its most iterations and its largest relative residual.

    Example:
        >>> gradient_agreement()["phantom_3"]["cosine"]  # doctest: +SKIP
        0.86
    """
    from deqir.bench import oder
    from deqir.bench.oder_restart import ct_split

    op, x, y, x0 = ct_split("val", count, size)
    model = oder._configure(
        load(name), mode="deq", solver="nesterov", iterations=GRADIENT_ITERATIONS, tol=0.0
    )
    params = list(model.network.parameters())

    def gradient(settings: dict) -> torch.Tensor:
        for key, value in settings.items():
            setattr(model, key, value)
        loss = (model(y, op, init=x0) - x).pow(2).mean()
        return torch.cat([g.flatten() for g in torch.autograd.grad(loss, params)])

    exact = gradient(EXACT_GRADIENT)
    backward = model.last_stats.backward  # did the reference's adjoint solve reach its tolerance?
    out: dict[str, dict[str, float]] = {
        "exact": {
            "converged": float(backward.converged.float().mean()),
            "iterations": float(backward.iterations.max()),
            "rel_residual": float(backward.rel_residual.max()),
            "tol": EXACT_GRADIENT["backward_tol"],
        }
    }
    for key, settings in GRADIENTS.items():
        g = gradient(settings)
        cosine = float(torch.nn.functional.cosine_similarity(g, exact, dim=0))
        out[key] = {"cosine": cosine, "norm_ratio": float(g.norm() / exact.norm())}
    return out


#: README labels of the compared gradients, in table order.
GRADIENT_LABELS = {
    "phantom_3": "phantom, 3 steps, λ = 0.5 (the shipped pair)",
    "phantom_20": "phantom, 20 steps, λ = 1",
    "implicit_1e-3": "implicit, Anderson to 1e-3",
}

#: README labels of the variants, in table order.
VARIANT_LABELS = {
    "shipped": "shipped pair (phantom gradient, 3 steps, λ = 0.5; spectral norm)",
    "more": "+ 300 steps, the same settings (the control)",
    "nosn": "+ 300 steps without spectral normalisation",
    "k20": "+ 200 steps, phantom gradient of 20 undamped steps",
    "implicit": "+ 300 steps, implicit gradient (Anderson to 1e-3)",
    "implicit_full": "900 steps from the pretrained prior, implicit gradient (Anderson to 1e-3)",
    "scalars": "ODER only: + 300 steps, step and τ learned at 100× the rate",
    "tau0025": "ODER only: + 300 steps at τ = 0.0025 (shipped: 0.0097)",
    "tau005": "ODER only: + 300 steps at τ = 0.005",
    "tau03": "ODER only: + 300 steps at τ = 0.03",
    "tau06": "ODER only: + 300 steps at τ = 0.06",
    "lr1e3_600": "ODER only: 600 steps from the shipped prior, lr 1e-3, τ from 0.01 (the control)",
    "tau03_lr1e3": "ODER only: as the control, τ from 0.03",
    "dilated": "ODER only: as the control, from a dilated prior (21 × 21 field; pretrained on 64², not 40²)",
    "dilated7": "ODER only: as the control, from a dilated prior of depth 7 (45 × 45 field; 64² patches)",
    "lr1e3_600_implicit": "ODER only: the control + 300 steps, implicit gradient (Anderson to 1e-3)",
    "lr1e3_600_pair": "600 steps from the shipped prior, lr 1e-3 (the control, with its RED(DEQ))",
    "lr1e3_600_implicit_pair": "the control + 300 steps, implicit gradient (with its RED(DEQ))",
    "sigma": "as the control, from a prior pretrained on σ from 0.01 to 0.05 (shipped: 0 to 0.1)",
    "sigma_implicit": "the same + 300 steps, implicit gradient",
}


def markdown_tables(report: dict) -> str:
    """The README's tables of a saved report (``results/oder_finetunes.json``): per variant, the
    mean test SNR of ODER and RED(DEQ), ODER minus TV (with its standard error, and on each
    source) and RED(DEQ) minus ODER on test and validation, ODER's best validation PSNR and, when
    the report has them, ODER's learned step and τ and ODER from noise-free measurements minus TV;
    then, when the report has two or more, the pretrained priors as denoisers (``priors``); then,
    when the report has them, the training gradients against the exact implicit one.

    Example:
        >>> import json
        >>> print(markdown_tables(json.load(open("results/oder_finetunes.json"))))  # doctest: +SKIP
    """
    from deqir.errors import InvalidValueError

    bench = report.get("bench") if isinstance(report, dict) else type(report).__name__
    if bench != "oder_finetunes" or not isinstance(report.get("summary"), dict):
        raise InvalidValueError(
            f"markdown_tables needs a report written by `deqir bench oder_finetunes --json`; got {bench!r}"
        )
    s, config = report["summary"], report.get("config", {})
    variants = [v for v in VARIANT_LABELS if f"ct_snr_{v}_oder_w30" in s]
    variants += sorted(
        {
            k.removeprefix("ct_snr_").removesuffix("_oder_w30")
            for k in s
            if k.startswith("ct_snr_") and k.endswith("_oder_w30")
        }
        - set(variants)
    )
    sources = sorted({src for v in variants for src in s.get(f"ct_oder_minus_tv_{v}_by_source", {})})
    head = ["fine-tuning", "ODER SNR", "RED(DEQ) SNR", "ODER − TV"]
    head += [
        f"ODER − TV, {src} ({s[f'ct_oder_minus_tv_{variants[0]}_by_source'][src]['images']})"
        for src in sources
    ]
    head += ["RED(DEQ) − ODER", "same, validation", "ODER best val. PSNR"]
    runs = config.get("runs", {})
    variant_runs = config.get("variants", {})
    oder_runs = [runs.get(variant_runs.get(v, {}).get("oder_w30", ""), {}) for v in variants]
    with_tau = any("learned_tau" in r for r in oder_runs)  # reports since the learned τ was recorded
    head += ["ODER step / τ"] * with_tau
    with_clean = any(f"ct_oder_noise_free_minus_tv_{v}_db" in s for v in variants)
    head += ["ODER from noise-free data − TV"] * with_clean
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]

    def pm(key: str) -> str:
        return f"{s[key]:.2f} ± {s[key.removesuffix('_db') + '_se_db']:.2f}" if key in s else ""

    for v, oder_run in zip(variants, oder_runs, strict=True):
        by_source = s.get(f"ct_oder_minus_tv_{v}_by_source", {})
        cells = [
            VARIANT_LABELS.get(v, v),
            f"{s[f'ct_snr_{v}_oder_w30']:.2f}",
            f"{s[f'ct_snr_{v}_red_deq']:.2f}" if f"ct_snr_{v}_red_deq" in s else "",
        ]
        cells += [pm(f"ct_oder_minus_tv_{v}_db")]
        cells += [f"{by_source[src]['db']:.2f}" if src in by_source else "" for src in sources]
        cells += [pm(f"ct_snr_gap_{v}_db")]
        cells += [f"{s[f'ct_val_snr_gap_{v}_db']:.2f}" if f"ct_val_snr_gap_{v}_db" in s else ""]
        cells += [f"{oder_run['best_val_psnr']:.2f}" if "best_val_psnr" in oder_run else ""]
        cells += [
            f"{oder_run['learned_step']:.2f} / {oder_run['learned_tau']:.4f}"
            if "learned_tau" in oder_run
            else ""
        ] * with_tau
        cells += [pm(f"ct_oder_noise_free_minus_tv_{v}_db")] * with_clean
        lines.append("| " + " | ".join(cells) + " |")
    priors = s.get("priors", {})
    if len(priors) > 1:  # the shipped prior and another one
        sigmas = list(next(iter(priors.values()))["error_over_noise"])
        lines += [
            "",
            "| pretrained prior | residual on the clean image / image | "
            + " | ".join(f"error / noise, σ = {sigma}" for sigma in sigmas)
            + " |",
            "|---|" + "---:|" * (1 + len(sigmas)),
        ]
        lines += [
            f"| {name} | {row['clean_residual']:.4f} | "
            + " | ".join(f"{row['error_over_noise'][sigma]:.3f}" for sigma in sigmas)
            + " |"
            for name, row in priors.items()
        ]
    gradients = [(label, key) for key, label in GRADIENT_LABELS.items() if f"gradient_{key}_cosine" in s]
    if gradients:
        lines += [
            "",
            "| training gradient | cosine to the exact implicit one | norm ratio |",
            "|---|---:|---:|",
        ]
        lines += [
            f"| {label} | {s[f'gradient_{key}_cosine']:.2f} | {s[f'gradient_{key}_norm_ratio']:.2g} |"
            for label, key in gradients
        ]
        if "gradient_exact_converged" in s:
            tol = s.get("gradient_exact_tol", EXACT_GRADIENT["backward_tol"])
            lines += [
                "",
                f"The exact gradient: the adjoint equation solved by Anderson to {tol:g}, reached on "
                f"{100 * s['gradient_exact_converged']:.0f} % of the images in at most "
                f"{s['gradient_exact_iterations']:.0f} iterations (largest relative residual "
                f"{s['gradient_exact_rel_residual']:.2g}).",
            ]
    return "\n".join(lines)


def _figure(report: BenchReport, path: Path) -> Path:
    rows = [r for r in report.rows if r["split"] == "test"]
    labels = [r["method"] if r["method"] == "tv" else f"{r['variant']}: {r['method']}" for r in rows]
    colors = {"tv": "C2", "oder_w30": "C0", "red_deq": "C1", "oder_w30_noise_free": "C7"}
    return snr_bars_by_source(rows, labels, [colors[r["method"]] for r in rows], path)


def run(
    quick: bool = False,
    figure_path: str | Path | None = None,
    runs_dir: str | Path = "runs",
    only: list[str] | None = None,
) -> BenchReport:
    """Run the benchmark (see the module docstring) on the variants of ``only`` (default: all
    whose runs are in ``runs_dir``); returns the report."""
    from deqir.bench.oder import _sources
    from deqir.bench.oder_restart import _tv
    from deqir.errors import DataError

    figure_path = Path(
        figure_path or ("out/oder_finetunes_quick.png" if quick else "results/oder_finetunes.png")
    )
    variants, missing = available_variants(runs_dir, only)
    if only is not None and missing:
        raise DataError(
            f"--only: runs {missing} have no weights/best.safetensors in {runs_dir}; train them "
            "(their configs are configs/<run>.yaml; see the Makefile) or drop them from --only"
        )
    oder_only = only is not None and all(VARIANTS[v][1] is None for v in variants if v != "shipped")
    counts = {"test": 2 if quick else None} | ({} if quick else {"val": None})
    report = BenchReport(
        "oder_finetunes",
        config={
            "quick": quick,
            "ct": "128², 90 angles, 50 dB input SNR, FBP initialisation",
            "solvers": f"Nesterov with each run's trained iterations; ODER w = {W} of 90 stratified "
            "angles then tail averaging as in deqir bench oder; RED(DEQ) all angles",
            "variants": {v: {"oder_w30": a, "red_deq": b} for v, (a, b) in variants.items()},
            "weights": f"shipped for 'shipped', else {runs_dir}/<run>/weights/best.safetensors",
            "missing": missing,
            "runs": run_status(
                runs_dir, [n for v, names in variants.items() if v != "shipped" for n in names if n]
            )
            | shipped_status(),
            "splits": {k: "whole" if v is None else v for k, v in counts.items()},
            "tv": "none (--quick)" if quick else "λ tuned on the first 4 validation images",
        },
    )
    groups = {split: _sources(SOURCE, split, count) for split, count in counts.items()}
    with ProcessPoolExecutor(max_workers=2) as pool:
        futures = {
            split: pool.submit(
                split_rows,
                split,
                count,
                variants,
                runs_dir=runs_dir,
                noise_free=split == "test" and not quick,
            )
            for split, count in counts.items()
        }
        tv = None if quick else pool.submit(_tv, counts["test"])
        gradients = None if quick or oder_only else pool.submit(gradient_agreement)
        priors = pool.submit(prior_rows, variants, runs_dir, counts["test"])
        per_image = {split: f.result() for split, f in futures.items()}
        report.summary["priors"] = priors.result()
        if tv is not None:
            per_image["test"]["tv"] = tv.result()
        if gradients is not None:
            for key, values in gradients.result().items():
                report.summary.update({f"gradient_{key}_{k}": v for k, v in values.items()})
    for split, rows in per_image.items():
        for key, snr in rows.items():
            variant, method = key.split("|") if "|" in key else ("", "tv")
            report.add_row(
                split=split,
                variant=variant,
                method=method,
                images=int(snr.numel()),
                snr=float(snr.mean()),
                **{f"snr_{g}": float(snr[idx].mean()) for g, idx in groups[split].items()},
            )
    report.summary.update(summarise(per_image, groups["test"]))
    report.config["figure"] = str(_figure(report, figure_path))
    return report
