# deqir: `make demo` runs the main job on embedded default data, `make test` runs the tests.
# Both create .venv on first use (torch 2.13.0 CPU from the local wheel, then the package).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.deqir-installed
TORCH  ?= torch==2.13.0

.PHONY: demo test lint bench bench-quick venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[data,dev]"
	# Packages that only ship offline data or pretrained weights: their heavy
	# dependencies (jax, scikit-learn, pandas...) are not needed by deqir.
	-$(BIN)/python -m pip install -q --no-deps nilearn sporco mahotas scico
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/deqir demo --out out

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

# Optional comparison packages (astra-toolbox pulls ~380 MB of CUDA runtime wheels; CPU use only).
$(VENV)/.bench-installed: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[data,dev,bench]"
	touch $@

bench: $(VENV)/.bench-installed
	$(BIN)/deqir bench operators --json results/operators.json
	$(BIN)/deqir bench solvers --json results/solvers.json
	$(BIN)/deqir bench denoisers --json results/denoisers.json
	$(BIN)/deqir bench baselines --json results/baselines.json
	$(BIN)/deqir bench oder --json results/oder.json
	$(BIN)/deqir bench oder_restart --json results/oder_restart.json
	$(BIN)/deqir bench elder --json results/elder.json
	$(BIN)/deqir bench luser --json results/luser.json
	$(BIN)/deqir bench idt --json results/idt.json

bench-quick: $(VENV)/.bench-installed
	for b in operators solvers denoisers baselines oder oder_restart elder luser idt; do \
	  $(BIN)/deqir bench $$b --quick --json out/$$b-quick.json || exit 1; \
	done

# The shipped pretrained denoisers (src/deqir/weights/denoiser_{natural,ct,mri}.*) from the
# committed configs: train each one (about 30 minutes each on one CPU core), then export its
# best weights with the test PSNR into the package. Runs go to runs/weights/ (rebuilt each time).
.PHONY: weights
WEIGHTS_RUNS ?= runs/weights
weights: $(STAMP)
	for name in natural ct mri; do \
	  rm -rf $(WEIGHTS_RUNS)/denoiser_$$name && \
	  $(BIN)/deqir train configs/denoiser_$$name.yaml --run-dir $(WEIGHTS_RUNS)/denoiser_$$name && \
	  $(BIN)/deqir weights export $(WEIGHTS_RUNS)/denoiser_$$name --name $$name || exit 1; \
	done
	$(BIN)/deqir weights list

clean:
	rm -rf out .pytest_cache .ruff_cache

# ODER (issue 6): pretrain the RED priors (CT: on noise levels 0.01 to 0.05,
# configs/oder_ct_prior_sigma.yaml), fine-tune RED(DEQ), ODER (w = 30, 10 of 90 angles; 4, 2 of 8
# coils), RED(DEQ) trained with Anderson to a tolerance (*_red_deq_anderson*; on CT the first stage
# below only), RED(Unfold), the
# U-Net post-processing baseline and CT RED(DEQ) and ODER (w = 30) again with training seed 1
# (*_seed1*); the CT equilibrium models in two stages, 600 steps at lr 1e-3, then 300 with the
# implicit gradient (configs/oder_ct_*_sigma{,_implicit}.yaml). Then the first CT recipe's pair
# (prior on 0 to 0.1, 900 steps at lr 3e-4: configs/oder_ct_{prior,red_deq,w30}.yaml) and the first
# CT and MRI pairs trained with Nesterov's adaptive restart (*_restart; the headline pairs are
# trained without it, with its guard), which deqir bench oder_restart compares. Export them into
# src/deqir/weights/ under their shipped names (deqir.bench.oder.SHIPPED_FROM), then benchmark
# (about 10 hours on two CPU cores).
ODER_RUNS = oder_ct_prior_sigma oder_mri_prior oder_ct_red_deq_sigma oder_ct_red_deq_sigma_implicit \
            oder_ct_w30_sigma oder_ct_w30_sigma_implicit oder_ct_w10_sigma oder_ct_w10_sigma_implicit \
            oder_mri_red_deq oder_mri_w4 oder_mri_w2 oder_ct_unfold_sigma oder_ct_unet_post \
            oder_ct_red_deq_anderson_sigma \
            oder_mri_red_deq_anderson oder_mri_red_deq_anderson_1e5 \
            oder_ct_red_deq_sigma_seed1 oder_ct_red_deq_sigma_seed1_implicit \
            oder_ct_w30_sigma_seed1 oder_ct_w30_sigma_seed1_implicit \
            oder_ct_prior oder_ct_red_deq oder_ct_w30 oder_ct_red_deq_restart oder_ct_w30_restart \
            oder_mri_red_deq_restart oder_mri_w4_restart
# the shipped CT runs' validation curves (results/oder_ct_shipped_curves.json and .png)
ODER_CT_SHIPPED = oder_ct_w30_sigma oder_ct_w30_sigma_implicit oder_ct_red_deq_sigma oder_ct_red_deq_sigma_implicit \
                  oder_ct_w10_sigma oder_ct_w10_sigma_implicit oder_ct_w30_sigma_seed1 oder_ct_w30_sigma_seed1_implicit \
                  oder_ct_red_deq_sigma_seed1 oder_ct_red_deq_sigma_seed1_implicit oder_ct_red_deq_anderson_sigma \
                  oder_ct_unfold_sigma
.PHONY: oder
oder: $(STAMP)
	for c in $(ODER_RUNS); do \
	  rm -rf runs/$$c && OMP_NUM_THREADS=1 $(BIN)/deqir train configs/$$c.yaml --device cpu || exit 1; \
	done
	$(BIN)/python -c "from deqir.bench.oder import export_all; print(*export_all(), sep='\n')"
	$(BIN)/deqir curves $(addprefix runs/,$(ODER_CT_SHIPPED)) --json results/oder_ct_shipped_curves.json
	OMP_NUM_THREADS=1 $(BIN)/deqir bench oder --json results/oder.json
	$(BIN)/deqir bench oder_restart --json results/oder_restart.json

# Experiments on the one unmet ODER target (ODER minus TV on CT, issue 6): ODER (w = 30) with a
# U-Net prior instead of the DnCNN, and the CT pair with a learning rate of 1e-3 instead of 3e-4;
# their validation curves beside the shipped runs' (after `make oder`), in results/oder_ct_curves.json
# and .png (deqir curves). Not shipped. About 3 hours on two CPU cores.
ODER_EXPERIMENTS = oder_ct_prior_unet oder_ct_w30_unet oder_ct_w30_lr1e3 oder_ct_red_deq_lr1e3
.PHONY: oder-experiments
oder-experiments: $(STAMP)
	for c in $(ODER_EXPERIMENTS); do \
	  rm -rf runs/$$c && OMP_NUM_THREADS=1 $(BIN)/deqir train configs/$$c.yaml --device cpu || exit 1; \
	done
	$(BIN)/deqir curves runs/oder_ct_w30 runs/oder_ct_red_deq runs/oder_ct_w30_unet \
	  runs/oder_ct_w30_lr1e3 runs/oder_ct_red_deq_lr1e3 --json results/oder_ct_curves.json

# More experiments on it: the first recipe's CT pair (shipped then; after `make oder`) fine-tuned further with its own
# settings (the control), without spectral normalisation, with a 20-step undamped phantom
# gradient, and with the implicit gradient
# (model.weights = the shipped run: network and learned step and tau). Validation curves in
# results/oder_ct_finetune_curves.json and .png; the test split against TV, as deqir bench oder
# tests, in results/oder_finetunes.json and .png. Not shipped. About 2 hours on one CPU core.
ODER_FINETUNES = oder_ct_w30_more oder_ct_red_deq_more oder_ct_w30_nosn oder_ct_red_deq_nosn \
                 oder_ct_w30_k20 oder_ct_red_deq_k20 oder_ct_w30_implicit oder_ct_red_deq_implicit
.PHONY: oder-finetunes
oder-finetunes: $(STAMP)
	for c in $(ODER_FINETUNES); do \
	  rm -rf runs/$$c && OMP_NUM_THREADS=1 $(BIN)/deqir train configs/$$c.yaml --device cpu || exit 1; \
	done
	$(BIN)/deqir curves runs/oder_ct_w30 runs/oder_ct_red_deq $(addprefix runs/,$(ODER_FINETUNES)) \
	  --json results/oder_ct_finetune_curves.json
	OMP_NUM_THREADS=1 $(BIN)/deqir bench oder_finetunes --only more,nosn,k20,implicit --json results/oder_finetunes.json

# Train the runs of configs/$(1).yaml side by side, one core each (logs in runs/NAME.log); interrupt
# stops them all, and a failed one fails the target after every run has ended, showing the logs' tails.
define train_side_by_side
	mkdir -p runs; pids=""; trap 'kill $$pids 2>/dev/null' INT TERM; \
	for c in $(1); do \
	  rm -rf runs/$$c; \
	  OMP_NUM_THREADS=1 $(BIN)/deqir train configs/$$c.yaml --device cpu > runs/$$c.log 2>&1 & pids="$$pids $$!"; \
	done; st=0; for p in $$pids; do wait $$p || st=1; done; \
	if [ $$st -ne 0 ]; then tail -n 5 $(addprefix runs/,$(addsuffix .log,$(1))); exit 1; fi
endef

# And the whole CT fine-tuning (900 steps from the first recipe's prior, as its pair's) with the
# implicit gradient instead of the 3-step phantom one (configs/oder_ct_{w30,red_deq}_implicit_full.yaml;
# the two trainings run side by side, one core each: 71 minutes here), validation curves in
# results/oder_ct_implicit_full_curves.json and .png, tested against TV as above:
# results/oder_implicit_full.json and .png. Not shipped.
ODER_IMPLICIT_FULL = oder_ct_w30_implicit_full oder_ct_red_deq_implicit_full
.PHONY: oder-implicit-full
oder-implicit-full: $(STAMP)
	$(call train_side_by_side,$(ODER_IMPLICIT_FULL))
	$(BIN)/deqir curves $(addprefix runs/,$(ODER_IMPLICIT_FULL)) --json results/oder_ct_implicit_full_curves.json
	OMP_NUM_THREADS=1 $(BIN)/deqir bench oder_finetunes --only implicit_full --json results/oder_implicit_full.json

# And ODER alone at another prior weight tau: the control's 300 further steps with tau = 0.0025,
# 0.005, 0.03 and 0.06 instead of the shipped 0.0097 (configs/oder_ct_w30_tau*.yaml), and with the
# step and tau learned at 100 times the network's rate (configs/oder_ct_w30_scalars.yaml); each run
# took about 18 minutes on one core when trained two at a time (five at once take longer). Validation
# curves in results/oder_ct_tau_curves.json and .png, tested against TV as above:
# results/oder_tau.json and .png. Not shipped.
ODER_TAU = oder_ct_w30_scalars oder_ct_w30_tau0025 oder_ct_w30_tau005 oder_ct_w30_tau03 oder_ct_w30_tau06
.PHONY: oder-tau
oder-tau: $(STAMP)
	$(call train_side_by_side,$(ODER_TAU))
	$(BIN)/deqir curves $(addprefix runs/,$(ODER_TAU)) --json results/oder_ct_tau_curves.json
	OMP_NUM_THREADS=1 $(BIN)/deqir bench oder_finetunes --only scalars,tau0025,tau005,tau03,tau06 --json results/oder_tau.json

# And ODER alone, fine-tuned from a pretrained prior for 600 steps at lr 1e-3 (the rate that reached
# the first recipe's run's plateau about 3 times sooner): that recipe's prior with tau starting at 0.01 (the
# control) and at 0.03, and a prior with a wider receptive field, a dilated DnCNN (21 x 21
# pixels at the shipped depth 5, 45 x 45 at depth 7; the shipped one sees 11 x 11) pretrained as a
# denoiser first, on 64 x 64 patches (the shipped prior: 40 x 40; configs/oder_ct_prior_dilated*.yaml).
# Each pair trains side by side, one core each (about 35 minutes for a depth-5 run, 1.65 times the
# cost per step at depth 7). Validation curves in results/oder_ct_from_prior_curves.json
# and .png, tested against TV as above: results/oder_from_prior.json and .png. Not shipped.
ODER_FROM_PRIOR = oder_ct_w30_lr1e3_600 oder_ct_w30_tau03_lr1e3 oder_ct_w30_dilated oder_ct_w30_dilated7
.PHONY: oder-from-prior
oder-from-prior: $(STAMP)
	$(call train_side_by_side,oder_ct_prior_dilated oder_ct_prior_dilated7)
	$(call train_side_by_side,oder_ct_w30_lr1e3_600 oder_ct_w30_tau03_lr1e3)
	$(call train_side_by_side,oder_ct_w30_dilated oder_ct_w30_dilated7)
	$(BIN)/deqir curves $(addprefix runs/,$(ODER_FROM_PRIOR)) --json results/oder_ct_from_prior_curves.json
	OMP_NUM_THREADS=1 $(BIN)/deqir bench oder_finetunes --only lr1e3_600,tau03_lr1e3,dilated,dilated7 \
	  --json results/oder_from_prior.json

# And the control of oder-from-prior (after it) continued 300 steps with the implicit gradient
# (configs/oder_ct_w30_lr1e3_600_implicit.yaml; about 21 minutes on two cores), validation curves in
# results/oder_ct_from_prior_implicit_curves.json and .png, tested against TV as above:
# results/oder_from_prior_implicit.json and .png. Not shipped.
.PHONY: oder-from-prior-implicit
oder-from-prior-implicit: $(STAMP)
	rm -rf runs/oder_ct_w30_lr1e3_600_implicit
	OMP_NUM_THREADS=2 $(BIN)/deqir train configs/oder_ct_w30_lr1e3_600_implicit.yaml --device cpu
	$(BIN)/deqir curves runs/oder_ct_w30_lr1e3_600 runs/oder_ct_w30_lr1e3_600_implicit \
	  --json results/oder_ct_from_prior_implicit_curves.json
	OMP_NUM_THREADS=1 $(BIN)/deqir bench oder_finetunes --only lr1e3_600_implicit \
	  --json results/oder_from_prior_implicit.json

# The like-for-like RED(DEQ) of oder-from-prior and oder-from-prior-implicit: fine-tuned from the same
# prior for 600 steps at lr 1e-3 (configs/oder_ct_red_deq_lr1e3_600.yaml), then 300 implicit-gradient
# steps (configs/oder_ct_red_deq_lr1e3_600_implicit.yaml), so RED(DEQ) minus ODER can be read for that
# recipe (about 23 + 16 minutes on one core). Tested with oder-sigma-prior's runs by its bench. Not shipped.
.PHONY: oder-from-prior-pair
oder-from-prior-pair: $(STAMP)
	$(call train_side_by_side,oder_ct_red_deq_lr1e3_600)
	$(call train_side_by_side,oder_ct_red_deq_lr1e3_600_implicit)

# ODER and RED(DEQ) from a prior pretrained on noise levels 0.01 to 0.05 instead of 0 to 0.1
# (configs/oder_ct_prior_sigma.yaml), each fine-tuned as oder-from-prior's control (600 steps at lr
# 1e-3, configs/oder_ct_{w30,red_deq}_sigma.yaml), then 300 implicit-gradient steps
# (configs/oder_ct_{w30,red_deq}_sigma_implicit.yaml), the two side by side; after oder-from-prior,
# oder-from-prior-implicit and oder-from-prior-pair, whose runs its bench compares: validation curves
# in results/oder_ct_sigma_curves.json and .png, the test split in results/oder_sigma.json and .png.
# Its second pair became the shipped CT recipe (make oder trains it with the other CT models from
# the same prior); a new prior makes all of them stale, so they are removed with it.
.PHONY: oder-sigma-prior
oder-sigma-prior: $(STAMP)
	rm -rf runs/oder_ct_*sigma*
	OMP_NUM_THREADS=2 $(BIN)/deqir train configs/oder_ct_prior_sigma.yaml --device cpu
	$(call train_side_by_side,oder_ct_w30_sigma oder_ct_red_deq_sigma)
	$(call train_side_by_side,oder_ct_w30_sigma_implicit oder_ct_red_deq_sigma_implicit)
	$(BIN)/deqir curves runs/oder_ct_w30_lr1e3_600 runs/oder_ct_w30_lr1e3_600_implicit \
	  runs/oder_ct_w30_sigma runs/oder_ct_w30_sigma_implicit runs/oder_ct_red_deq_lr1e3_600 \
	  runs/oder_ct_red_deq_lr1e3_600_implicit runs/oder_ct_red_deq_sigma runs/oder_ct_red_deq_sigma_implicit \
	  --json results/oder_ct_sigma_curves.json
	OMP_NUM_THREADS=1 $(BIN)/deqir bench oder_finetunes \
	  --only lr1e3_600_pair,lr1e3_600_implicit_pair,sigma,sigma_implicit --json results/oder_sigma.json

# ELDER (issue 7): DEQ fine-tuning of the gradient-step potential and of the implicit baseline, from
# the shipped denoisers, on Gaussian deblurring and radial MRI (configs/elder_*.yaml), export them
# into src/deqir/weights/, then benchmark (about 70 minutes of training on two CPU cores).
ELDER_RUNS = elder_deblur elder_deblur_implicit elder_mri_radial elder_mri_radial_implicit
.PHONY: elder
elder: $(STAMP)
	for c in $(ELDER_RUNS); do \
	  rm -rf runs/$$c && OMP_NUM_THREADS=1 $(BIN)/deqir train configs/$$c.yaml --device cpu || exit 1; \
	done
	$(BIN)/python -c "from deqir.bench.elder import export_all; print(*export_all(), sep='\n')"
	OMP_NUM_THREADS=1 $(BIN)/deqir bench elder --json results/elder.json

# LUSER (issue 8): on deblurring, sparse-view CT and single-coil MRI (configs/luser_*.yaml), train
# LUSER and its comparison models (LU-deep of depth 5/10/17, LU-shallow, Gilton's DE-Prox DEQ: the
# overrides in deqir.bench.luser.VARIANTS), export them into src/deqir/weights/, then benchmark
# (about 60 minutes on one CPU core). Runs go to runs/luser_<task>_<variant>.
.PHONY: luser
luser: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -c "from deqir.bench.luser import train_all; train_all()"
	$(BIN)/python -c "from deqir.bench.luser import export_all; print(*export_all(), sep='\n')"
	OMP_NUM_THREADS=1 $(BIN)/deqir bench luser --json results/luser.json

# ODER on intensity diffraction tomography (issue 9): pretrain the 8-channel RED prior on synthetic
# cells, fine-tune RED(DEQ) (72 LEDs) and ODER (24 of 72), export, benchmark (about 1.5 hours).
IDT_RUNS = oder_idt_prior oder_idt_red_deq oder_idt_w24
.PHONY: idt
idt: $(STAMP)
	for c in $(IDT_RUNS); do \
	  rm -rf runs/$$c && OMP_NUM_THREADS=1 $(BIN)/deqir train configs/$$c.yaml --device cpu || exit 1; \
	done
	$(BIN)/python -c "from deqir.bench.idt import export_all; print(*export_all(), sep='\n')"
	OMP_NUM_THREADS=1 $(BIN)/deqir bench idt --json results/idt.json
