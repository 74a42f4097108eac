# `make gpu-check` (docs/speed.md "Measure on your GPU"): bench, paper SFT, every CUDA-only path and the priced
# plan in one JSON, at most 8 minutes on one H100. DEVICE=cpu runs the same code at tiny sizes (~1 minute).
# On a machine without the venv: python3 -m experiments.gpu_check [--out FILE]
GPU_CHECK_OUT ?= $(p_gpu_check)
GPU_CHECK_ARGS ?=

.PHONY: gpu-check
gpu-check: $(STAMP) ## measure this project on your GPU (img/s, SFT cost, CUDA paths, priced plan) in one JSON
	$(PY) -m experiments.gpu_check $(DEVFLAG) --out $(GPU_CHECK_OUT) $(GPU_CHECK_ARGS)
