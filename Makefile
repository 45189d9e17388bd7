# Two commands on a fresh clone:  make lab  (open the notebooks)  and  make test  (check everything).
# Everything lives in ./.venv; nothing is installed or registered outside this folder.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: lab test lint clean-venv gpu-check

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Reinstall only when the dependencies change.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# JupyterLab refuses to run as root without --allow-root (containers, CI machines).
lab: $(STAMP)
	$(BIN)/jupyter lab --notebook-dir=notebooks $$([ "$$(id -u)" = 0 ] && echo --allow-root)

# The browser tests (tests/browser) need Chromium and Playwright: installed here when missing,
# else skipped with the reason, which -rs prints in the summary.
test: $(STAMP)
	@sh .ci/install_browser_deps.sh $(BIN)/python
	TQDM_DISABLE=1 $(BIN)/python -m pytest --nbval -rs
	$(MAKE) --no-print-directory lint

# Style: ruff's linter and formatter (the formatter only checks here; `ruff format .` applies it).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# Student and autograder versions of every assignment (otter-grader) in build/assignments/, the
# solutions graded against all public and hidden tests on the way; offline. See docs/teaching.md.
.PHONY: assignments
assignments: $(STAMP)
	TQDM_DISABLE=1 $(BIN)/python notebooks/assignments/make_assignments.py

# On a machine with an NVIDIA GPU: notebook 04's GPU branch, the benchmarks on CUDA and a
# two-process torchrun run, in one report under build/gpu-check/. Skips where there is no GPU.
gpu-check: $(STAMP)
	TQDM_DISABLE=1 $(BIN)/python benchmarks/gpu_check.py

clean-venv:
	rm -rf $(VENV)
