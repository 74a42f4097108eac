# Defend a model trained elsewhere (README "Defend your own model"; experiments/defend.py).
#   make defend MODEL=model.pt DATA=digits DEFENSE=sft PROFILE=demo TRIGGER=badnets
#   make defend MODEL=attack_result.pt DATA=cifar10 FRACTION=0.1
#   make defend MODEL=model.pt DATA=my_train/ TEST_DATA=my_test/ DEFEND_ARGS="--arch resnet18 --norm imagenet"
# Output: OUT (default $(A)/defend/<parent>-<model file stem>-<path hash>, chosen by experiments/defend.py)/
# <DEFENSE>.safetensors (+ .json) and <DEFENSE>.report.json. SET= overrides the profile as for every step.
# Always runs (phony): the model file lives outside the pipeline's artifacts. The lock is the model file's
# (one run per model at a time; runs for different models go in parallel), and torch gets one CPU thread
# unless OMP_NUM_THREADS says otherwise, as in `make demo`.
MODEL     ?=
DATA      ?=
DEFENSE   ?= sft
TEST_DATA ?=
FRACTION  ?=
TRIGGER   ?=
BD_TARGET ?=
OUT       ?=
DEFEND_ARGS ?=
defend_opt = $(if $(2),$(1) $(2))
DEFEND_FLAGS = --model $(MODEL) --data $(DATA) --defense $(DEFENSE) --profile $(PROFILE) $(SETFLAGS) \
  $(call defend_opt,--test-data,$(TEST_DATA)) $(call defend_opt,--fraction,$(FRACTION)) \
  $(call defend_opt,--trigger,$(TRIGGER)) $(call defend_opt,--target,$(BD_TARGET)) \
  $(call defend_opt,--out,$(OUT)) $(DEVFLAG) $(DEFEND_ARGS)

.PHONY: defend
defend: $(STAMP) ## defend a model trained elsewhere: MODEL=model.pt DATA=name|folder (DEFENSE=sft)
	$(if $(and $(MODEL),$(DATA)),,$(error make defend needs MODEL=<model file> and DATA=<dataset name or image folder>))
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(subst --target $@,--target $(abspath $(MODEL)),$(RUN)) \
	  experiments.defend $(strip $(DEFEND_FLAGS))
