# Section 5.4: the six baseline defences, Fig. 5/12/13 (CA vs ASR) and Fig. 6 (cost). See docs/defenses.md.
#   make figure5 PROFILE=demo    (CIFAR10 in paper/quick; the profile's first dataset otherwise, demo: digits)
#   make figure12 / figure13     (CIFAR100 / GTSRB)
#   make figure6                 (device-hours per defence over every dataset and attack; FIG6_COST=budget|full)
BASELINES     := abl ac fp nad nc spectral
FIG5_DEFENSES ?= $(BASELINES) ft sft
FIG6_DEFENSES ?= $(FIG5_DEFENSES)
# budget: FT/SFT charged at the profile's charge_epochs (the paper's regime, docs/defenses.md); full: whole runs.
FIG6_COST     ?= budget

$(foreach d,$(BASELINES),$(eval $(call defense_rule,$(d))))

# The paper's dataset of a figure, or the profile's first dataset when the profile lacks it.
fig_dataset = $(if $(filter $(1),$(DATASETS)),$(1),$(firstword $(DATASETS)))

define ca_asr_figure
$$(call p_figure,$$(FG),$(1)): $$(foreach a,$$(ATTACKS),$$(foreach d,$$(FIG5_DEFENSES),$$(call p_result,$$(RS),$$(call p_run,$(2),$$(a)),$$(d))))
	$$(PY) -m figures.figure5 --results $$(RS) --dataset $(2) --attacks "$$(ATTACKS)" --defenses "$$(FIG5_DEFENSES)" --out $$@
endef
$(eval $(call ca_asr_figure,figure5,$(call fig_dataset,cifar10)))
$(eval $(call ca_asr_figure,figure12,$(call fig_dataset,cifar100)))
$(eval $(call ca_asr_figure,figure13,$(call fig_dataset,gtsrb)))

$(call p_figure,$(FG),figure6): $(foreach r,$(runs),$(foreach d,$(FIG6_DEFENSES),$(call p_result,$(RS),$(r),$(d))))
	$(PY) -m figures.figure6 --results $(RS) --datasets "$(DATASETS)" --attacks "$(ATTACKS)" \
	  --defenses "$(FIG6_DEFENSES)" --profile $(PROFILE) --set "$(SET)" --cost $(FIG6_COST) --out $@

.PHONY: figure5 figure6 figure12 figure13 baselines
figure5:  ## Fig. 5, CA vs ASR of the six baselines, FT and SFT on CIFAR10 (or the profile's first dataset)
figure12: ## Fig. 12, the same on CIFAR100
figure13: ## Fig. 13, the same on GTSRB
figure6:  ## Fig. 6, device-hours of each defence (FIG6_COST=budget|full)
figure5 figure6 figure12 figure13: $(STAMP)
	@+$(SUBMAKE) $(call p_figure,$(FG),$@)

baselines: $(STAMP) ## the six baseline defences on every run, no figure
	@+$(SUBMAKE) $(foreach r,$(runs),$(foreach d,$(BASELINES),$(call p_result,$(RS),$(r),$(d))))
