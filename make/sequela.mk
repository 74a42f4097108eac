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
$(call p_mia,$(RS),%,backdoor): $(call p_backdoor,$(CK),%)
	$(RUN) experiments.sequela mia $(PROFLAGS) $(call runargs,$*) --model backdoor $(DEVFLAG)

define seq_mia_rule
$$(call p_mia,$$(RS),%,$(1)): $$(call p_result,$$(RS),%,$(1))
	$$(RUN) experiments.sequela mia $$(PROFLAGS) $$(call runargs,$$*) --model $(1) $$(DEVFLAG)
endef
$(foreach m,$(SEQ_DEFENSES),$(eval $(call seq_mia_rule,$(m))))

# ---- re-injection: one file per (dataset, attack, model, ratio)
define seq_reinject_rule
$$(call p_reinject,$$(RS),%,$(1),$(2)): $$(call p_result,$$(RS),%,$(1))
	$$(RUN) experiments.sequela reinject $$(PROFLAGS) $$(call runargs,$$*) --model $(1) --ratio $(2) $$(DEVFLAG)
endef
define seq_clean_rule
$$(call p_reinject,$$(RS),$$(call p_run,$(1),%),clean,$(2)): $$(call p_clean_model,$$(CK),$(1)) \
  $$(call p_backdoor,$$(CK),$$(call p_run,$(1),%))
	$$(RUN) experiments.sequela reinject $$(PROFLAGS) --dataset $(1) --attack $$* --model clean --ratio $(2) $$(DEVFLAG)
endef
$(foreach r,$(SEQ_RATIOS),$(foreach m,$(SEQ_DEFENSES),$(eval $(call seq_reinject_rule,$(m),$(r))))\
  $(foreach d,$(sort $(DATASETS) $(SEQ_DATASET)),$(eval $(call seq_clean_rule,$(d),$(r)))))

# ---- figures
$(call p_figure,$(FG),figure10): $(foreach r,$(runs),$(foreach m,backdoor $(SEQ_DEFENSES),$(call p_mia,$(RS),$(r),$(m))))
	$(PY) -m figures.figure10 --results $(RS) --datasets "$(DATASETS)" --attacks "$(ATTACKS)" \
	  --defenses "$(SEQ_DEFENSES)" --out $@

define seq_reinject_figure
$$(call p_figure,$$(FG),$(1)): $$(foreach m,clean $$(SEQ_DEFENSES),$$(foreach r,$$(SEQ_RATIOS),\
  $$(call p_reinject,$$(RS),$$(call p_run,$$(SEQ_DATASET),$(2)),$$(m),$$(r))))
	$$(PY) -m figures.reinjection --results $$(RS) --dataset $$(SEQ_DATASET) --attack $(2) \
	  --defenses "$$(SEQ_DEFENSES)" --ratios "$$(SEQ_RATIOS)" --out $$@
endef
$(eval $(call seq_reinject_figure,figure11,badnets))
$(eval $(call seq_reinject_figure,figure14,blended))
$(eval $(call seq_reinject_figure,figure15,inputaware))
$(eval $(call seq_reinject_figure,figure16,lf))
$(eval $(call seq_reinject_figure,figure17,wanet))

.PHONY: figure10 figure11 figure14 figure15 figure16 figure17
figure10: ## Fig. 10, membership inference on the backdoored and each defended model
figure11: ## Fig. 11, re-injecting BadNets into each defended model
figure14: ## Fig. 14, the same for Blended
figure15: ## Fig. 15, the same for InputAware
figure16: ## Fig. 16, the same for LF
figure17: ## Fig. 17, the same for WaNet
figure10 figure11 figure14 figure15 figure16 figure17: $(STAMP)
	@+$(SUBMAKE) $(call p_figure,$(FG),$@)
