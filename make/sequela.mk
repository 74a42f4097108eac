# Backdoor sequela (paper Section 6): membership inference (Fig. 10) and re-injection (Fig. 11, 14-17).
#   make figure10 PROFILE=demo         MIA accuracy of the backdoored and each defended model
#   make figure11 / figure14 / figure15 / figure16 / figure17   re-injection of BadNets / Blended / InputAware / LF / WaNet
# The defended checkpoints come from `standalone defend`, which writes each one before its results
# JSON, so the JSON stands for both. See docs/sequela.md.
SEQ_DEFENSES ?= ft sft abl ac fp nad nc spectral
ifeq ($(origin SEQ_RATIOS),undefined)
SEQ_RATIOS := $(call profile_field,reinject_ratios)
endif
SUBMAKE_LISTS += SEQ_RATIOS="$(SEQ_RATIOS)"
# Re-injection figures use CIFAR10 as the paper does, or the profile's first dataset (demo: digits).
SEQ_DATASET ?= $(if $(filter cifar10,$(DATASETS)),cifar10,$(firstword $(DATASETS)))

# ---- membership inference: one file per (dataset, attack, model)
$(RS)/%/mia/backdoor.json: $(CK)/%/backdoor.safetensors
	$(RUN) experiments.sequela mia $(PROFLAGS) $(call runargs,$*) --model backdoor $(DEVFLAG)

define seq_mia_rule
$$(RS)/%/mia/$(1).json: $$(RS)/%/$(1).json
	$$(RUN) experiments.sequela mia $$(PROFLAGS) $$(call runargs,$$*) --model $(1) $$(DEVFLAG)
endef
$(foreach m,$(SEQ_DEFENSES),$(eval $(call seq_mia_rule,$(m))))

# ---- re-injection: one file per (dataset, attack, model, ratio)
define seq_reinject_rule
$$(RS)/%/reinject/$(1)/$(2).json: $$(RS)/%/$(1).json
	$$(RUN) experiments.sequela reinject $$(PROFLAGS) $$(call runargs,$$*) --model $(1) --ratio $(2) $$(DEVFLAG)
endef
define seq_clean_rule
$$(RS)/$(1)/%/reinject/clean/$(2).json: $$(CK)/$(1)/clean/model.safetensors $$(CK)/$(1)/%/backdoor.safetensors
	$$(RUN) experiments.sequela reinject $$(PROFLAGS) --dataset $(1) --attack $$* --model clean --ratio $(2) $$(DEVFLAG)
endef
$(foreach r,$(SEQ_RATIOS),$(foreach m,$(SEQ_DEFENSES),$(eval $(call seq_reinject_rule,$(m),$(r))))\
  $(foreach d,$(sort $(DATASETS) $(SEQ_DATASET)),$(eval $(call seq_clean_rule,$(d),$(r)))))

# ---- figures
$(FG)/figure10.png: $(foreach r,$(runs),$(foreach m,backdoor $(SEQ_DEFENSES),$(RS)/$(r)/mia/$(m).json))
	$(PY) -m figures.figure10 --results $(RS) --datasets "$(DATASETS)" --attacks "$(ATTACKS)" \
	  --defenses "$(SEQ_DEFENSES)" --out $@

define seq_reinject_figure
$$(FG)/$(1).png: $$(foreach m,clean $$(SEQ_DEFENSES),$$(foreach r,$$(SEQ_RATIOS),$$(RS)/$$(SEQ_DATASET)/$(2)/reinject/$$(m)/$$(r).json))
	$$(PY) -m figures.reinjection --results $$(RS) --dataset $$(SEQ_DATASET) --attack $(2) \
	  --defenses "$$(SEQ_DEFENSES)" --ratios "$$(SEQ_RATIOS)" --out $$@
endef
$(eval $(call seq_reinject_figure,figure11,badnets))
$(eval $(call seq_reinject_figure,figure14,blended))
$(eval $(call seq_reinject_figure,figure15,inputaware))
$(eval $(call seq_reinject_figure,figure16,lf))
$(eval $(call seq_reinject_figure,figure17,wanet))

.PHONY: figure10 figure11 figure14 figure15 figure16 figure17
figure10 figure11 figure14 figure15 figure16 figure17: $(STAMP)
	@+$(SUBMAKE) $(FG)/$@.png
