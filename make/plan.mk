# `make plan`: each figure's steps and their work in image-passes, and the device-hours of `make all`
# at a measured training throughput (experiments/plan.py; README "Before you run `make all`").
#   make plan PROFILE=paper IMG_PER_S=20000      per-figure work and the total in device-hours
#   make plan BENCH=bench.txt                    throughput from a saved `make bench` output
#   make plan PLAN_FIGS="figure4 figure5" PLAN_STEPS=1   only these figures, every step listed
PLAN_FIGS ?= $(ALL_FIGURES)
IMG_PER_S ?=
BENCH     ?=

.PHONY: plan
plan: $(STAMP) ## each figure's work and the device-hours of make all (IMG_PER_S= or BENCH=)
	@$(PY) -m experiments.plan --profile $(PROFILE) --figures "$(PLAN_FIGS)" $(if $(IMG_PER_S),--img-per-s $(IMG_PER_S)) \
	  $(if $(BENCH),--bench $(BENCH)) $(if $(PLAN_STEPS),--steps)
