# One target per artifact. Steps are file targets: a rerun skips finished work and
# `make -j` runs independent steps at once. See README.md.
#   make demo                 whole pipeline on embedded digits, CPU, minutes
#   make test                 the test suite (CPU)
#   make figure4 PROFILE=quick
#   make figure4 PROFILE=quick SET="finetune_epochs=5 sft.lr_max1=0.3"   overrides -> artifacts of quick+<hash>
#   make all                  every figure that exists, PROFILE (default paper: GPU + datasets)

PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
PROFILE  ?= paper
DEVICE   ?=
A        ?= artifacts
export ARTIFACTS = $(A)
# Where each artifact lives: experiments/paths.py, its one owner, read once here as Make functions p_<name>
# ($(call p_backdoor,DIR,RUN), ...). Stdlib only, so $(PYTHON) runs it before any venv exists.
$(foreach d,$(shell $(PYTHON) -m experiments.paths make),$(eval $(d)))
$(if $(value p_run),,$(error $(PYTHON) -m experiments.paths make gave no layout; see the line above))
# SET="key=value ..." overrides profile settings (typed, checked: experiments/profiles.py); every step gets
# them as --set. Overridden, the artifacts go to <profile>+<hash of the overrides>, never the profile's own.
SET      ?=
# SEEDS=0,1 is SET="seeds=0,1" (README "Seeds"), which only figure4, summary and report take (see "Seeds" below).
ifneq ($(SEEDS),)
override SET := $(strip $(SET) seeds=$(SEEDS))
endif
SETFLAGS  = $(foreach s,$(SET),--set $(s))
# Seeds: checked and mapped where the user's goals are given (the combining sub-make gets SEED_DIRS; MAKELEVEL
# would also skip a `make` started from another make, e.g. the tests under `make test`). The refusal comes before
# any Python call; SEED_DIRS ("seed:directory" words) comes from experiments/profiles.py seed_runs, the mapping's
# one owner.
ifneq ($(filter seeds=%,$(SET)),)
ifeq ($(origin SEED_DIRS),undefined)
$(if $(filter-out figure4 summary report,$(or $(MAKECMDGOALS),help)),$(error SET="$(SET)": seeds= runs figure4, \
  summary and report; for other targets give one seed: SET="seed=S"))
SEED_DIRS := $(shell $(PY) -m experiments.profiles $(PROFILE) seed_dirs $(SETFLAGS))
$(if $(SEED_DIRS),,$(error SET="$(SET)": no seed directories; see the line above))
endif
endif
PROFLAGS  = --profile $(PROFILE) $(SETFLAGS)
# Goals that only start a sub-make with their own PROFILE (demo: demo, all: $(PROFILE), default paper) resolve SET there.
DISPATCH := $(if $(MAKECMDGOALS),$(if $(filter-out all demo demo-full test help clean-demo bench,$(MAKECMDGOALS)),,1),1)
ifeq ($(strip $(SET))$(DISPATCH),)
PDIR     := $(PROFILE)
else ifeq ($(DISPATCH),1)
PDIR     := $(PROFILE)
else
PDIR     := $(shell $(PY) -m experiments.profiles $(PROFILE) name $(SETFLAGS))
$(if $(PDIR),,$(error SET="$(SET)" does not apply to PROFILE=$(PROFILE); see the line above))
endif
CK        = $(call p_checkpoints,$(PDIR))
RS        = $(call p_results,$(PDIR))
FG        = $(call p_figures,$(PDIR))
DEVFLAG   = $(if $(DEVICE),--device $(DEVICE))
# Where steps run (experiments/launch.py; README "Running on GPUs and on Slurm"). Recipes prefix steps with $(RUN).
#   LAUNCHER=local  in make's process; GPUS=0,1,... gives each concurrent `make -j` step its own GPU
#   LAUNCHER=slurm  one Slurm job per step (submitit), resources from SLURM_*; logs under $(A)/logs/
LAUNCHER ?= local
GPUS     ?=
SLURM_PARTITION ?=
SLURM_GPUS ?= 1
SLURM_CPUS ?= 8
SLURM_MEM  ?= 32G
SLURM_TIME ?= 24:00:00
SLURMFLAGS = --partition "$(SLURM_PARTITION)" --slurm-gpus $(SLURM_GPUS) --cpus $(SLURM_CPUS) --mem "$(SLURM_MEM)" \
  --time $(SLURM_TIME) --log-dir $(p_logs)/$(basename $(@:$(A)/%=%))
$(if $(filter-out local slurm,$(LAUNCHER)),$(error LAUNCHER=$(LAUNCHER): choose one of local slurm))
LOCALFLAGS = $(if $(GPUS),--gpus $(GPUS))
# --target $@: the step locks its output (lock files in $(A)/.locks), so a second `make` of the same step
# at once waits, then skips.
RUN = $(strip $(PY) -m experiments.launch --launcher $(LAUNCHER) --target $@ --locks $(p_locks) \
  $(if $(filter slurm,$(LAUNCHER)),$(SLURMFLAGS),$(LOCALFLAGS)) --)
# Lists come from the profile (experiments/profiles.py) once the venv exists; override freely.
# A failing call (an unknown PROFILE, a bad SET) yields !error; Make then stops at once with the one-line reason.
# Goals that read no list in this make (each call imports torch): given only these, none is computed, so
# `make demo` does not read PROFILE=paper's lists before its sub-make reads demo's.
LISTLESS   := all demo demo-full test test-slow help clean-demo bench plan rehearsal data fake-data defend report
NEED_LISTS := $(filter-out $(LISTLESS),$(MAKECMDGOALS))
profile_field = $(if $(NEED_LISTS),$(if $(wildcard $(PY)),$(shell $(PY) -m experiments.profiles $(PROFILE) $(1) $(SETFLAGS) 2>/dev/null || echo '!error')))
# Evaluated once per Make run (each call imports torch), unless given on the command line.
ifeq ($(origin DATASETS),undefined)
DATASETS := $(call profile_field,datasets)
endif
ifeq ($(origin ATTACKS),undefined)
ATTACKS := $(call profile_field,attacks)
endif
ifneq ($(filter !error,$(DATASETS) $(ATTACKS)),)
$(error PROFILE=$(PROFILE): $(shell $(PY) -m experiments.profiles $(PROFILE) name $(SETFLAGS) 2>&1 | tail -n 1 | sed 's/^[A-Za-z]*[Ee]rror: //'))
endif
runs      = $(foreach d,$(DATASETS),$(foreach a,$(ATTACKS),$(call p_run,$(d),$(a))))
# The one way a goal builds its files in a sub-make of the same profile: every list read here is passed
# on (make/*.mk add theirs to SUBMAKE_LISTS), so the sub-make reads none again.
SUBMAKE   = $(MAKE) --no-print-directory DATASETS="$(DATASETS)" ATTACKS="$(ATTACKS)" $(SUBMAKE_LISTS)
# runargs: a run (p_run, a stem) back to its dataset and attack.
runargs   = --dataset $(word 1,$(subst /, ,$(1))) --attack $(word 2,$(subst /, ,$(1)))

.PHONY: all demo demo-full figure-files test test-slow bench data figure1 figure4 summary clean-demo help
.DELETE_ON_ERROR:
# `make -j figure4 figure5` must not build their shared steps twice at once: given named goals (not
# file paths), the top-level make runs them one after another and each goal's sub-make runs its steps
# in parallel (make -j is passed on). File goals (`make -j 8 artifacts/...`) stay parallel.
ifeq ($(MAKELEVEL),0)
ifneq ($(strip $(foreach g,$(MAKECMDGOALS),$(if $(findstring /,$(g)),,$(g)))),)
.NOTPARALLEL:
endif
endif
.SECONDARY:

help:
	@sed -n '2,7p' Makefile

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

# ---- top level ---------------------------------------------------------------------
# Every figure that exists; the later figures' targets live in make/*.mk.
ALL_FIGURES := figure1 figure4 summary table1 figure5 figure12 figure13 figure6 figure3 figure7 figure8 figure9 figure2 \
               figure10 figure11 figure14 figure15 figure16 figure17
DEMO_FULL   := figure1 figure4 summary table1 figure5 figure6 figure3 figure7 figure8 figure9 figure2 figure10 figure11

# Many figures are built by ONE sub-make over their files, so that under `make -j` a step that
# several figures share (a backdoored model, an FT run) is built once, not once per figure.
fig_file = $(if $(filter summary,$(1)),$(call p_summary,$(RS)),$(call p_figure,$(FG),$(1)))
FIGS     ?=
figure-files: $(foreach f,$(FIGS),$(call fig_file,$(f)))
# CPU boxes: one thread per step and one step per core beats threads inside each small step.
DEMO_JOBS ?= $(shell nproc 2>/dev/null || echo 1)
demo_make = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(MAKE) --no-print-directory -j $(DEMO_JOBS) PROFILE=demo
# The demo's artifact directory: demo, or demo+<hash> under SET= (one Python call, only when SET is given).
demo_dir  = $(if $(strip $(SET)),$$($(PY) -m experiments.profiles demo name $(SETFLAGS)),demo)
# The demo's directories, of that shell variable d.
demo_rs   = $(call p_results,$$d)
demo_fg   = $(call p_figures,$$d)

all: $(STAMP)
	@+$(MAKE) --no-print-directory PROFILE=$(PROFILE) FIGS="$(ALL_FIGURES)" figure-files

demo: $(STAMP)
	@+$(demo_make) FIGS="figure1 figure4 summary" figure-files
	@d=$(demo_dir); cat $(call p_summary,$(demo_rs)); echo "figures: $(demo_fg)/  results: $(demo_rs)/"; \
	$(PY) -m experiments.report --profile demo $(SETFLAGS) --results $(demo_rs) --figures $(demo_fg) --out $(call p_report,$$d)

# Everything else on digits too (Table 1, Fig. 2, 3, 5-11); CPU, longer than `demo`.
demo-full: $(STAMP)
	@+$(demo_make) FIGS="$(DEMO_FULL)" figure-files
	@d=$(demo_dir); echo "figures: $(demo_fg)/  results: $(demo_rs)/"

test: $(STAMP)
	@$(PY) -m pytest -q -m "not slow" tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; exit $$rc

# The trained-result tests too long for CI (README "Targets"); about 10 more minutes on 2 cores.
test-slow: $(STAMP)
	@$(PY) -m pytest -q -m slow tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; exit $$rc

bench: $(STAMP)
	$(PY) -m experiments.bench $(DEVFLAG)

# ---- standalone scenario: backdoored model -> FT / SFT --------------------------------
# Trigger files: KEY_IMAGE=PATH (Blended's key image), LF_PATTERNS=DIR (BackdoorBench's LF patterns, one per
# dataset, <dataset>_preactresnet18_0_255.npy); each reaches the train steps of its attack (docs/attacks.md).
KEY_IMAGE   ?=
LF_PATTERNS ?=
$(if $(KEY_IMAGE),$(if $(wildcard $(KEY_IMAGE)),,$(error KEY_IMAGE=$(KEY_IMAGE): no such file; give an image file)))
$(if $(LF_PATTERNS),$(if $(wildcard $(LF_PATTERNS)/.),,$(error LF_PATTERNS=$(LF_PATTERNS): no such folder; give \
  the folder holding <dataset>_preactresnet18_0_255.npy)))
# trigger_flags: a run (p_run) -> the trigger-file flags of its attack.
trigger_flags = $(strip $(if $(filter blended,$(word 2,$(subst /, ,$(1)))),$(if $(KEY_IMAGE),--key-image $(KEY_IMAGE))) \
  $(if $(filter lf,$(word 2,$(subst /, ,$(1)))),$(if $(LF_PATTERNS),--lf-patterns $(LF_PATTERNS))))
$(call p_backdoor,$(CK),%): | $(STAMP)
	$(RUN) experiments.standalone train $(PROFLAGS) $(call runargs,$*) $(call trigger_flags,$*) $(DEVFLAG)

define defense_rule
$$(call p_result,$$(RS),%,$(1)): $$(call p_backdoor,$$(CK),%)
	$$(RUN) experiments.standalone defend $$(PROFLAGS) $$(call runargs,$$*) --defense $(1) $$(DEVFLAG)
endef
$(foreach d,ft sft,$(eval $(call defense_rule,$(d))))

# ---- figures ---------------------------------------------------------------------------
figure1: $(STAMP)
	@+$(SUBMAKE) $(call p_figure,$(FG),figure1)
$(call p_figure1_lr,$(RS)): | $(STAMP)
	$(RUN) experiments.lr_schedule $(PROFLAGS) --out $@
$(call p_figure,$(FG),figure1): $(call p_figure1_lr,$(RS))
	$(PY) -m figures.figure1 $< --out $@

# Seeds (SET="seeds=0,1"): each seed's FT/SFT results are built by a sub-make under SET="<the other overrides>
# seed=s", so they land exactly where that SET alone writes (reusable; never the profile's own); figure4, summary and
# report then combine the seeds' results (SRS) into $(PDIR), the profile with the seeds override (SEED_DIRS: top).
seed_dir   = $(call p_results,$(lastword $(subst :, ,$(1))))
SRS        = $(if $(SEED_DIRS),$(foreach p,$(SEED_DIRS),$(call seed_dir,$(p))),$(RS))
defended   = $(foreach d,$(1),$(foreach r,$(runs),$(call p_result,$(d),$(r),ft) $(call p_result,$(d),$(r),sft)))
# The seeds' sub-makes (none without seeds), then the one that combines; `&&` stops at a failed seed.
seeded_make = $(foreach p,$(SEED_DIRS),$(SUBMAKE) SEEDS= SET="$(strip $(filter-out seeds=%,$(SET)) \
  seed=$(firstword $(subst :, ,$(p))))" PDIR=$(lastword $(subst :, ,$(p))) $(call defended,$(call seed_dir,$(p))) &&) \
  $(SUBMAKE) $(if $(SEED_DIRS),PDIR=$(PDIR) SEED_DIRS="$(SEED_DIRS)")
ifneq ($(SEED_DIRS),)
$(call defended,$(SRS)):  # made by the seeds' sub-makes (a rule here so that `make -n` lists them all)
endif

figure4: $(STAMP)
	@+$(seeded_make) $(call p_figure,$(FG),figure4)
$(call p_figure,$(FG),figure4): $(call defended,$(SRS))
	$(PY) -m figures.figure4 --results $(SRS) --datasets "$(DATASETS)" --attacks "$(ATTACKS)" --out $@

summary: $(STAMP)
	@+$(seeded_make) $(call p_summary,$(RS))
	@cat $(call p_summary,$(RS))
$(call p_summary,$(RS)): $(call defended,$(SRS))
	$(PY) -m experiments.summary $(PROFLAGS) --results $(SRS) --datasets "$(DATASETS)" --attacks "$(ATTACKS)" --out $@

clean-demo:
	rm -rf $(call p_checkpoints,demo) $(call p_results,demo) $(call p_figures,demo)

# Later issues add their targets in make/*.mk.
-include make/*.mk
