# "Fine-Tuning Is All You Need to Mitigate Backdoor Attacks", reproduced: one target per figure, each built
# from file steps, so a rerun skips finished work and `make -j` runs independent steps at once.
# `make help` lists the targets; make/setup.mk holds the Make programming (layout, lists, seeds, launching).

## Variables: PROFILE=paper|quick|demo|smoke|rehearsal (default paper)  SET="key=value ..." (artifacts under
##   <profile>+<hash>)  SEEDS=0,1  DEVICE=cuda|cpu  A=artifacts  LAUNCHER=local|slurm  GPUS=0,1  SLURM_*=...
##   KEY_IMAGE=key.png  LF_PATTERNS=dir (BackdoorBench's trigger files for Blended / LF)
PROFILE  ?= paper
SET      ?=
DEVICE   ?=
A        ?= artifacts
include make/setup.mk

ALL_FIGURES := figure1 figure4 summary table1 figure5 figure12 figure13 figure6 figure3 figure7 figure8 figure9 figure2 \
               figure10 figure11 figure14 figure15 figure16 figure17
DEMO_FULL   := figure1 figure4 summary table1 figure5 figure6 figure3 figure7 figure8 figure9 figure2 figure10 figure11
FIGS        ?=

.PHONY: all demo demo-full figure-files test test-slow bench figure1 figure4 summary clean-demo help
.DELETE_ON_ERROR:
.SECONDARY:

## Targets:
help: ## this list of targets
	@awk '$(HELP_AWK)' $(MAKEFILE_LIST)

$(STAMP): requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

# ---- top level
all: $(STAMP) ## every figure of the paper at PROFILE (default paper: a GPU and the datasets)
	@+$(MAKE) --no-print-directory PROFILE=$(PROFILE) FIGS="$(ALL_FIGURES)" figure-files

# The figures' files in one sub-make: under `make -j` a step that several figures share is built once.
figure-files: $(foreach f,$(FIGS),$(call fig_file,$(f)))

demo: $(STAMP) ## Fig. 1, Fig. 4 and the summary on embedded digits (CPU, minutes), then the report
	@+$(demo_make) FIGS="figure1 figure4 summary" figure-files
	@d=$(demo_dir); cat $(call p_summary,$(demo_rs)); echo "figures: $(demo_fg)/  results: $(demo_rs)/"; \
	$(PY) -m experiments.report --profile demo $(SETFLAGS) --results $(demo_rs) --figures $(demo_fg) --out $(call p_report,$$d)

demo-full: $(STAMP) ## every figure that digits allow (Table 1, Fig. 2-11); CPU, longer than demo
	@+$(demo_make) FIGS="$(DEMO_FULL)" figure-files
	@d=$(demo_dir); echo "figures: $(demo_fg)/  results: $(demo_rs)/"

# Torch threads set, not left to torch: pytest is one process, so one thread per core (make demo: one step per
# core, one thread each); on a loaded box give OMP_NUM_THREADS=1 (docs/measurements.md: 376 s vs 596 s idle).
test: $(STAMP) ## the test suite, CPU (not the slow tests)
	@OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(NPROC)} $(PY) -m pytest -q -m "not slow" tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; exit $$rc

test-slow: $(STAMP) ## the trained-result tests too long for CI (about 10 more minutes on 2 cores)
	@OMP_NUM_THREADS=$${OMP_NUM_THREADS:-$(NPROC)} $(PY) -m pytest -q -m slow tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose" >&2; exit 1; fi; exit $$rc

bench: $(STAMP) ## training throughput of this box (images/s), for make plan
	$(PY) -m experiments.bench $(DEVFLAG)

clean-demo: ## delete the demo's checkpoints, results and figures
	rm -rf $(call p_checkpoints,demo) $(call p_results,demo) $(call p_figures,demo)

# ---- standalone scenario: backdoored model -> FT / SFT
$(call p_backdoor,$(CK),%): | $(STAMP)
	$(RUN) experiments.standalone train $(PROFLAGS) $(call runargs,$*) $(call trigger_flags,$*) $(DEVFLAG)

define defense_rule
$$(call p_result,$$(RS),%,$(1)): $$(call p_backdoor,$$(CK),%)
	$$(RUN) experiments.standalone defend $$(PROFLAGS) $$(call runargs,$$*) --defense $(1) $$(DEVFLAG)
endef
$(foreach d,ft sft,$(eval $(call defense_rule,$(d))))

# ---- Fig. 1: the SFT learning-rate schedule
figure1: $(STAMP) ## Fig. 1, the SFT learning-rate schedule
	@+$(SUBMAKE) $(call p_figure,$(FG),figure1)
$(call p_figure1_lr,$(RS)): | $(STAMP)
	$(RUN) experiments.lr_schedule $(PROFLAGS) --out $@
$(call p_figure,$(FG),figure1): $(call p_figure1_lr,$(RS))
	$(PY) -m figures.figure1 $< --out $@

# ---- Fig. 4 and the summary: every run's FT and SFT results (of each seed under SET="seeds=...")
figure4: $(STAMP) ## Fig. 4, CA and ASR of FT and SFT on every dataset and attack (SEEDS=0,1: each seed, combined)
	@+$(seeded_make) $(call p_figure,$(FG),figure4)
$(call p_figure,$(FG),figure4): $(call defended,$(SRS))
	$(PY) -m figures.figure4 --results $(SRS) --datasets "$(DATASETS)" --attacks "$(ATTACKS)" --out $@

summary: $(STAMP) ## the Fig. 4 numbers as a text table, printed
	@+$(seeded_make) $(call p_summary,$(RS))
	@cat $(call p_summary,$(RS))
$(call p_summary,$(RS)): $(call defended,$(SRS))
	$(PY) -m experiments.summary $(PROFLAGS) --results $(SRS) --datasets "$(DATASETS)" --attacks "$(ATTACKS)" --out $@

# The other figures, the data and the tools: one file each.
-include $(filter-out make/setup.mk,$(wildcard make/*.mk))
