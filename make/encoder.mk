# Encoder-based scenario (Fig. 2): SimCLR -> BadEncoder -> downstream (classifier-only, whole model).
#   make figure2 PROFILE=demo      whole chain on digits, CPU
#   make figure2                   paper: pre-train cifar10 + stl10; downstream cifar10, stl10, svhn
# Lists come from the profile's `encoder` (experiments/profiles.py); computed only when figure2 runs.
ENC_MODES := classifier whole clean
ENC_CK     = $(call p_encoder_dir,$(CK))
ENC_RS     = $(call p_encoder_dir,$(RS))
enc_field  = $(call profile_field,encoder.$(1))
# Computed when figure2 is among the figures built (`make figure2`, `make all`, the file goal .../figure2.png),
# or given on the command line.
ifeq ($(origin ENC_PRE),undefined)
ENC_WANTED := $(filter figure2 $(call p_figure,%,figure2),$(FIGS) $(MAKECMDGOALS))
ENC_PRE   := $(if $(ENC_WANTED),$(call enc_field,pretrain_sets))
ENC_DOWN  := $(if $(ENC_WANTED),$(call enc_field,downstream_sets))
endif
SUBMAKE_LISTS += $(if $(ENC_PRE),ENC_PRE="$(ENC_PRE)" ENC_DOWN="$(ENC_DOWN)")

.PHONY: figure2

figure2: $(STAMP) ## Fig. 2, encoder scenario: SimCLR -> BadEncoder -> downstream
	@+$(SUBMAKE) $(call p_figure,$(FG),figure2)

$(call p_simclr,$(ENC_CK),%): | $(STAMP)
	$(RUN) experiments.encoder pretrain $(PROFLAGS) --pretrain $* $(DEVFLAG)

# One pattern rule per pre-training set, so that the stem is the downstream task alone.
define enc_rules
$$(call p_badencoder,$$(ENC_CK),$(1),%): $$(call p_simclr,$$(ENC_CK),$(1))
	$$(RUN) experiments.encoder badencoder $$(PROFLAGS) --pretrain $(1) --downstream $$* $$(DEVFLAG)
$(foreach m,$(ENC_MODES),
$$(call p_downstream,$$(ENC_RS),$(1),%,$(m)): $$(call p_badencoder,$$(ENC_CK),$(1),%)
	$$(RUN) experiments.encoder downstream $$(PROFLAGS) --pretrain $(1) --downstream $$* --mode $(m) $$(DEVFLAG)
)
endef
$(foreach p,cifar10 stl10 digits,$(eval $(call enc_rules,$(p))))

$(call p_figure,$(FG),figure2): $(foreach p,$(ENC_PRE),$(foreach d,$(ENC_DOWN),$(foreach m,$(ENC_MODES),$(call p_downstream,$(ENC_RS),$(p),$(d),$(m)))))
	$(PY) -m figures.figure2 --results $(ENC_RS) --pretrain "$(ENC_PRE)" --downstream "$(ENC_DOWN)" --out $@
