# Table 1: a clean image and the same image under each of the five attacks (+ amplified residual).
#   make table1 PROFILE=demo     (digits; needs the standalone backdoor checkpoints, trained on demand)
# Triggers are read from $(CK)/<dataset>/<attack>/backdoor.safetensors, so LF and InputAware show
# the trigger their backdoored model learned. See docs/attacks.md.
T1_ATTACKS  ?= badnets blended lf inputaware wanet
T1_DATASETS ?= $(DATASETS)

.PHONY: table1
table1: $(STAMP) ## Table 1, a clean image under each of the five attacks
	@+$(SUBMAKE) $(call p_figure,$(FG),table1)

$(call p_table1,$(RS)): $(foreach d,$(T1_DATASETS),$(foreach a,$(T1_ATTACKS),$(call p_backdoor,$(CK),$(call p_run,$(d),$(a)))))
	$(RUN) experiments.table1 $(PROFLAGS) --datasets "$(T1_DATASETS)" --attacks "$(T1_ATTACKS)" \
	  --out $@ $(DEVFLAG)

$(call p_figure,$(FG),table1): $(call p_table1,$(RS))
	$(PY) -m figures.table1 $< --out $@
