# Datasets (backdoor/data.py; README "Datasets"). Files and the converted cache go under DATA_DIR (default data/).
#   make data                      fetch + convert everything `make all` reads: cifar10 cifar100 gtsrb stl10
#                                  stl10_unlabeled svhn (the list is backdoor.data.MAKE_ALL)
#   make data DATASETS=gtsrb       only these (DATASETS given on the command line)
#   make fake-data FAKE_DIR=DIR    synthetic stand-ins at real size in the real on-disk formats, converted
#                                  (no download; about 3 min and 4.2 GB + 1.1 GB cache); then DATA_DIR=DIR
#   make fake-data FAKE_N=500      the same with 500 training images each (test splits scaled), for CI
DATA_NAMES   = $(if $(filter command line,$(origin DATASETS)),$(DATASETS))
DATA_DIRFLAG = $(if $(DATA_DIR),--data-dir $(DATA_DIR))
FAKE_DIR    ?= $(p_fake_data)
FAKE_N      ?=

.PHONY: data fake-data
data: $(STAMP) ## fetch + convert the datasets make all reads (DATASETS=gtsrb: only these; DATA_DIR=data)
	$(PY) -m backdoor.data --download $(DATA_DIRFLAG) $(DATA_NAMES)

fake-data: $(STAMP) ## synthetic stand-ins in the real on-disk formats (FAKE_DIR=DIR, FAKE_N=500)
	$(PY) -m backdoor.data --fake $(FAKE_DIR) $(if $(FAKE_N),--n $(FAKE_N)) $(DATA_NAMES)
	$(PY) -m backdoor.data --data-dir $(FAKE_DIR) $(if $(FAKE_N),--n $(FAKE_N)) $(DATA_NAMES)
