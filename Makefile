# Two commands do everything on a fresh machine:
#   make demo   - create .venv, install, run the fusion search on the digits example
#   make test   - create .venv, install, run the whole test suite
#   make multimodal - build the image + text example's data and run its search
#   make bench  - run the cache, overhead and ensemble-selection benchmarks (about 10 min)
#   make scale  - run the data-at-scale benchmark (5,000 and 40,000 generated rows; about 20 min)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo multimodal bench scale test clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/fusion-search run examples/digits.yaml

multimodal: $(STAMP)
	$(BIN)/python examples/multimodal/make_data.py
	$(BIN)/fusion-search run examples/multimodal/digits_multimodal.yaml

bench: $(STAMP)
	$(BIN)/python -m benchmarks.selection
	$(BIN)/python -m benchmarks.cache
	$(BIN)/python -m benchmarks.overhead

scale: $(STAMP)
	$(BIN)/python -m benchmarks.scale

test: $(STAMP)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) fusion_runs .pytest_cache examples/multimodal/data
