# How the Makefile learns what it does not own: the layout (experiments/paths.py), the profile's lists, the
# override hash and the seeds' directories (experiments/profiles.py), and how a step is launched
# (experiments/launch.py). Included first by the Makefile: Make expands a rule's file names as it reads it.

PYTHON   ?= python3
VENV     := .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.installed
export ARTIFACTS = $(A)

# ---- the layout: functions p_<name> ($(call p_backdoor,DIR,RUN), ...), stdlib only, so before any venv exists
$(foreach d,$(shell $(PYTHON) -m experiments.paths make),$(eval $(d)))
$(if $(value p_run),,$(error $(PYTHON) -m experiments.paths make gave no layout; see the line above))

# ---- SET= and SEEDS=: every step gets the overrides as --set; the artifacts go to <profile>+<hash> (PDIR)
ifneq ($(SEEDS),)
override SET := $(strip $(SET) seeds=$(SEEDS))
endif
SETFLAGS  = $(foreach s,$(SET),--set $(s))
PROFLAGS  = --profile $(PROFILE) $(SETFLAGS)
# Goals that only start a sub-make with their own PROFILE resolve SET there (demo: demo; all: $(PROFILE)).
DISPATCH := $(if $(MAKECMDGOALS),$(if $(filter-out all demo demo-full test help clean-demo bench,$(MAKECMDGOALS)),,1),1)
# seeds=: checked where the user's goals are given (SEED_DIRS unset), before any Python call. SEED_DIRS
# ("seed:directory" words) is experiments/profiles.py seed_runs; the combining sub-make gets it.
ifneq ($(filter seeds=%,$(SET)),)
ifeq ($(origin SEED_DIRS),undefined)
$(if $(filter-out figure4 summary report,$(or $(MAKECMDGOALS),help)),$(error SET="$(SET)": seeds= runs figure4, \
  summary and report; for other targets give one seed: SET="seed=S"))
SEED_DIRS := $(shell $(PY) -m experiments.profiles $(PROFILE) seed_dirs $(SETFLAGS))
$(if $(SEED_DIRS),,$(error SET="$(SET)": no seed directories; see the line above))
endif
endif
PDIR     := $(PROFILE)
ifneq ($(strip $(SET)),)
ifneq ($(DISPATCH),1)
PDIR     := $(shell $(PY) -m experiments.profiles $(PROFILE) name $(SETFLAGS))
$(if $(PDIR),,$(error SET="$(SET)" does not apply to PROFILE=$(PROFILE); see the line above))
endif
endif
CK        = $(call p_checkpoints,$(PDIR))
RS        = $(call p_results,$(PDIR))
FG        = $(call p_figures,$(PDIR))
DEVFLAG   = $(if $(DEVICE),--device $(DEVICE))

# ---- launching: recipes prefix steps with $(RUN), which locks the step's output (--target $@, lock files
# under $(A)/.locks), so a second `make` of the same step at once waits, then skips.
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
RUN = $(strip $(PY) -m experiments.launch --launcher $(LAUNCHER) --target $@ --locks $(p_locks) \
  $(if $(filter slurm,$(LAUNCHER)),$(SLURMFLAGS),$(LOCALFLAGS)) --)

# ---- the profile's lists, read once per Make run (each call imports torch) unless given on the command line.
# Goals that read no list here: given only these, none is read (`make demo` reads demo's lists in its sub-make,
# never PROFILE=paper's). A failing call (an unknown PROFILE, a bad SET) yields !error: one line, then stop.
LISTLESS   := all demo demo-full test test-slow help clean-demo bench plan rehearsal data fake-data defend report gpu-check
NEED_LISTS := $(filter-out $(LISTLESS),$(MAKECMDGOALS))
profile_field = $(if $(NEED_LISTS),$(if $(wildcard $(PY)),$(shell $(PY) -m experiments.profiles $(PROFILE) $(1) $(SETFLAGS) 2>/dev/null || echo '!error')))
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
# runargs: a run (p_run, a stem) back to its dataset and attack.
runargs   = --dataset $(word 1,$(subst /, ,$(1))) --attack $(word 2,$(subst /, ,$(1)))

# ---- sub-makes. A named figure builds its file in a sub-make of the same profile that gets every list read
# here (make/*.mk add theirs to SUBMAKE_LISTS), so it reads none again, and under `make -j` a step several
# figures share is built once. `make -j figure4 figure5`: the top make runs named goals one after another
# (each sub-make runs its steps in parallel); file goals (`make -j 8 artifacts/...`) stay parallel.
SUBMAKE   = $(MAKE) --no-print-directory DATASETS="$(DATASETS)" ATTACKS="$(ATTACKS)" $(SUBMAKE_LISTS)
ifeq ($(MAKELEVEL),0)
ifneq ($(strip $(foreach g,$(MAKECMDGOALS),$(if $(findstring /,$(g)),,$(g)))),)
.NOTPARALLEL:
endif
endif
fig_file  = $(if $(filter summary,$(1)),$(call p_summary,$(RS)),$(call p_figure,$(FG),$(1)))

# ---- seeds (SET="seeds=0,1"): each seed's FT/SFT results come from a sub-make under SET="<the other overrides>
# seed=S", so they land where that SET alone writes (reusable, never the profile's own); figure4, summary and
# report then combine the seeds' results (SRS) into PDIR. Without seeds, seeded_make is $(SUBMAKE).
seed_of    = $(firstword $(subst :, ,$(1)))
seed_pdir  = $(lastword $(subst :, ,$(1)))
seed_dir   = $(call p_results,$(call seed_pdir,$(1)))
SRS        = $(if $(SEED_DIRS),$(foreach p,$(SEED_DIRS),$(call seed_dir,$(p))),$(RS))
defended   = $(foreach d,$(1),$(foreach r,$(runs),$(call p_result,$(d),$(r),ft) $(call p_result,$(d),$(r),sft)))
seed_make  = $(SUBMAKE) SEEDS= SET="$(strip $(filter-out seeds=%,$(SET)) seed=$(call seed_of,$(1)))" \
  PDIR=$(call seed_pdir,$(1)) $(call defended,$(call seed_dir,$(1))) &&
seeded_make = $(foreach p,$(SEED_DIRS),$(call seed_make,$(p))) \
  $(SUBMAKE) $(if $(SEED_DIRS),PDIR=$(PDIR) SEED_DIRS="$(SEED_DIRS)")
ifneq ($(SEED_DIRS),)
$(call defended,$(SRS)):  # made by the seeds' sub-makes (a rule here so that `make -n` lists them all)
endif

# ---- the demo: PROFILE=demo in a sub-make, one thread per step and one step per core (CPU boxes)
NPROC     := $(shell nproc 2>/dev/null || echo 1)
DEMO_JOBS ?= $(NPROC)
demo_make = OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(MAKE) --no-print-directory -j $(DEMO_JOBS) PROFILE=demo
# Its directory in the shell variable d: demo, or demo+<hash> under SET= (one Python call, only then).
demo_dir  = $(if $(strip $(SET)),$$($(PY) -m experiments.profiles demo name $(SETFLAGS)),demo)
demo_rs   = $(call p_results,$$d)
demo_fg   = $(call p_figures,$$d)

# ---- `make help`: every `target: ... ## what it does` line and every `## ` line, in file order
HELP_AWK = /^\#\# /{sub(/^\#\# /,""); print; next} \
  /^[a-z][a-zA-Z0-9_-]*:.*\#\# /{t=$$0; sub(/:.*/,"",t); d=$$0; sub(/.*\#\# /,"",d); printf "  %-13s %s\n", t, d}

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
