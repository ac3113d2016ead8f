# pefs developer commands. A fresh machine needs only python3 (3.10+) and make.
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.pefs-installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: demo test lint install clean

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## the main job on the embedded offline model and data
demo: $(STAMP)
	$(VENV)/bin/pefs tune --strategy lora --shots 5

## the test suite (what CI runs)
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q tests

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs build *.egg-info
