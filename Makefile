# Two commands on a fresh machine:
#   make run   -> set up .venv and run molgym's main job
#   make test  -> set up .venv and run the test suite
# The set-up installs the CPU build of torch when no NVIDIA GPU is visible, before anything that depends on
# torch, so pip never pulls CUDA packages onto a CPU machine.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.molgym-installed
# Extra pip arguments that make `pip install torch==X` resolve to a CPU wheel on this machine (on our machines
# pip's configured find-links already holds the CPU wheel, so nothing is needed).
TORCH_CPU_PIP_ARGS ?=
RUN_OUT ?= runs/make-run

.PHONY: run test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
		echo "GPU found: installing torch $(TORCH_VERSION) (CUDA build)"; \
		$(BIN)/python -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	else \
		echo "No GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
		$(BIN)/python -m pip install --quiet $(TORCH_CPU_PIP_ARGS) "torch==$(TORCH_VERSION)"; \
	fi
	@$(BIN)/python -c "import torch, sys; cuda = torch.version.cuda; gpu = torch.cuda.is_available(); \
		sys.exit(0 if (gpu or cuda is None) else 'a CUDA build of torch was installed on a machine without a GPU; set TORCH_CPU_PIP_ARGS to reach a CPU wheel')"
	$(BIN)/python -m pip install --quiet -e ".[test,pm6]"
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/molgym bench --suite quick --generators random_search,qm9,simgen,diffusion,diffusion_relaxed,rl_policy \
		--option rl_policy.checkpoint=shipped --out $(RUN_OUT)
	@echo "make run: report at $(RUN_OUT)/report.html (Markdown: $(RUN_OUT)/report.md)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
