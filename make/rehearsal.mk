# `make rehearsal` (README "Before you run `make all`"): every step of `make all` at real data sizes with
# PROFILE=rehearsal's tiny budgets (experiments/profiles.py), on fake data in the real on-disk formats.
#   make rehearsal                           writes + converts the fakes under $(FAKE_DIR) if missing, then runs
#   make rehearsal DATA_DIR=/tmp/fake_full   reuse a directory that already holds (converted) fakes
# The fakes are only written for datasets whose converted cache DATA_DIR lacks; real data there is used as is.
REHEARSAL_DATA = $(or $(DATA_DIR),$(FAKE_DIR))
REHEARSAL_JOBS ?= 2

.PHONY: rehearsal
rehearsal: $(STAMP) ## every step of make all at real data sizes, tiny budgets, fake data
	$(if $(and $(filter-out file,$(origin PROFILE)),$(filter-out rehearsal,$(PROFILE))),$(error make rehearsal runs PROFILE=rehearsal \
	  (paper's every step at tiny budgets); drop PROFILE=$(PROFILE), or run make all PROFILE=$(PROFILE)))
	@+missing=; for d in $$($(PY) -c 'from backdoor.data import MAKE_ALL; print(*MAKE_ALL)'); do \
	  test -f $(REHEARSAL_DATA)/cache/$$d.safetensors || missing="$$missing $$d"; done; \
	if [ -n "$$missing" ]; then $(MAKE) --no-print-directory fake-data FAKE_DIR=$(REHEARSAL_DATA) DATASETS="$$missing" \
	  || exit 1; fi
	@+OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(MAKE) --no-print-directory -j $(REHEARSAL_JOBS) all PROFILE=rehearsal \
	  DATA_DIR=$(REHEARSAL_DATA)
