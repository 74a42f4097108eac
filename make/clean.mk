# The reference model trained without poison (experiments/clean.py), with the profile's attack-training
# recipe: the transfer scenario's `--attack clean` (make/transfer_ablations.mk) and re-injection's
# `--model clean` (make/sequela.mk) both start from it. Its one rule:
$(call p_clean_model,$(CK),%): | $(STAMP)
	$(RUN) experiments.clean $(PROFLAGS) --dataset $* $(DEVFLAG)
