# pefs developer commands. A fresh machine needs only python3 (3.10+) and make.
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.pefs-installed
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1

.PHONY: demo test test-oldest lint install clean mutation

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

## the backbone / strategy / transformers tests on the oldest timm, peft, transformers and accelerate that
## setup.cfg allows (each ``NAME>=X`` there is installed as ``NAME==X``), in a separate venv .venv-oldest.
## torch/torchvision are pinned to 2.14.1/0.29.1, not to setup.cfg's lower bounds: pip on these machines is
## capped at torch<=2.14.1 and PyPI's torchvision imports only beside torch 2.14.1 + torchvision 0.29.1, so the
## torch lower bound is not exercised here.
OLDEST      = .venv-oldest
OLDEST_PINS = $(shell sed -n 's/^ *\(timm\|peft\|transformers\|accelerate\)>=\([0-9.]*\) *$$/\1==\2/p' setup.cfg) \
              torch==2.14.1 torchvision==0.29.1
OLDEST_TESTS = tests/test_backbones.py tests/test_strategies.py tests/test_transformers.py \
               tests/test_transformers_loading.py tests/test_peft_format.py

$(OLDEST)/.pefs-installed: setup.cfg pyproject.toml Makefile
	test -x $(OLDEST)/bin/python || python3 -m venv $(OLDEST)
	$(OLDEST)/bin/python -m pip install --quiet --upgrade pip
	$(OLDEST)/bin/python -m pip install --quiet -e '.[dev]' $(OLDEST_PINS)
	touch $@

test-oldest: $(OLDEST)/.pefs-installed
	$(OLDEST)/bin/python -c 'import timm, peft, transformers, accelerate, torch; \
	    print(*(f"{m.__name__} {m.__version__}" for m in (timm, peft, transformers, accelerate, torch)), sep=", ")'
	$(OLDEST)/bin/python -m pytest -q $(OLDEST_TESTS)

## mutation testing (tools/mutate.py; resumable, minutes of CPU; not part of `make test` or CI): runs the sampled
## mutants not yet in tests/mutation.json, then renders tests/MUTATION.md from it
mutation: $(STAMP)
	nice -n 10 $(PY) tools/mutate.py
	$(PY) tools/mutate.py --report

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(OLDEST) runs build *.egg-info
