# Transfer-based scenario (Fig. 3) and the standalone ablations (Fig. 7, 8, 9). See docs/transfer_ablations.md.
#   make figure3 PROFILE=demo    backdoored pre-trained model -> head swap -> FT / SFT on each downstream task
#   make figure7 / figure8 / figure9   fine-tuning set fraction / FT learning rate / SFT LR_MAX1 on 10%
# Sizes come from the profile's `sweeps` (experiments/profiles.py, experiments/sweeps.py); each run writes one file.
comma := ,
# One Python call per Make run (name=v1,v2 words); lists are read once, not per expansion.
ifeq ($(origin _SW),undefined)
_SW := $(call profile_field,sweep_lists)
endif
SUBMAKE_LISTS += _SW="$(_SW)"
sw   = $(subst $(comma), ,$(patsubst $(1)=%,%,$(filter $(1)=%,$(_SW))))
PRETRAIN   ?= $(call sw,pretrain)
DOWNSTREAM ?= $(call sw,downstream)
_TA_ATTACKS  := $(ATTACKS)
_TA_DATASETS := $(DATASETS)
_TA_RUNS     := $(foreach d,$(_TA_DATASETS),$(foreach a,$(_TA_ATTACKS),$(call p_run,$(d),$(a))))
TR            = $(call p_transfer_dir,$(RS))

# ---- transfer: the backdoored pre-trained models are the standalone checkpoints of $(PRETRAIN), the clean one
# make/clean.mk's
define transfer_rule
$$(call p_transfer,$$(TR),$(1),$(2),$(3)): $$(call p_backdoor,$$(CK),$$(call p_run,$$(PRETRAIN),$(2)))
	$$(RUN) experiments.transfer run $$(PROFLAGS) --downstream $(1) --attack $(2) --defense $(3) $$(DEVFLAG)
endef
define transfer_clean_rule
$$(call p_transfer,$$(TR),$(1),clean,$(2)): $$(call p_clean_model,$$(CK),$$(PRETRAIN)) \
  $$(foreach a,$$(_TA_ATTACKS),$$(call p_backdoor,$$(CK),$$(call p_run,$$(PRETRAIN),$$(a))))
	$$(RUN) experiments.transfer run $$(PROFLAGS) --downstream $(1) --attack clean --defense $(2) \
	  --triggers "$$(_TA_ATTACKS)" $$(DEVFLAG)
endef
$(foreach d,$(DOWNSTREAM),$(foreach f,ft sft,$(eval $(call transfer_clean_rule,$(d),$(f)))\
  $(foreach a,$(_TA_ATTACKS),$(eval $(call transfer_rule,$(d),$(a),$(f))))))

$(call p_figure,$(FG),figure3): $(foreach d,$(DOWNSTREAM),$(foreach a,$(_TA_ATTACKS) clean,\
  $(call p_transfer,$(TR),$(d),$(a),ft) $(call p_transfer,$(TR),$(d),$(a),sft)))
	$(PY) -m figures.figure3 --results $(TR) --downstream "$(DOWNSTREAM)" --attacks "$(_TA_ATTACKS)" --out $@

# ---- ablations: one file per (dataset, attack, point); points equal to the standalone FT/SFT run reuse it
define ablation_rule
$$(call p_ablation,$$(RS),%,$(1)): $$(call p_backdoor,$$(CK),%)
	$$(RUN) experiments.ablations $$(PROFLAGS) $$(call runargs,$$*) --points $(1) $$(DEVFLAG)
endef
$(foreach p,$(call sw,points),$(eval $(call ablation_rule,$(p))))

define ablation_figure
$$(call p_figure,$$(FG),figure$(1)): $$(foreach r,$$(_TA_RUNS),$$(addprefix $$(call p_run,$$(RS),$$(r))/,$$(call sw,files$(1))))
	$$(PY) -m figures.figure$(1) --results $$(RS) --profile $$(PROFILE) --set "$$(SET)" --datasets "$$(_TA_DATASETS)" \
	  --attacks "$$(_TA_ATTACKS)" --out $$@
endef
$(foreach n,7 8 9,$(eval $(call ablation_figure,$(n))))

.PHONY: figure3 figure7 figure8 figure9
figure3: ## Fig. 3, transfer scenario: backdoored pre-trained model -> FT / SFT downstream
figure7: ## Fig. 7, ablation: fine-tuning set fraction
figure8: ## Fig. 8, ablation: FT learning rate
figure9: ## Fig. 9, ablation: SFT LR_MAX1 on 10%
figure3 figure7 figure8 figure9: $(STAMP)
	@+$(SUBMAKE) $(call p_figure,$(FG),$@)
