# Two commands do all the setup on a fresh machine:
#   make quickstart   create/reuse .venv, install, run the quickstart sweep on digits, print its table
#   make test         create/reuse .venv, install, run the test suite
# VENV=/some/path reuses a virtual environment elsewhere (CI keeps one in ~/.cache).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := build/.installed$(subst /,_,$(abspath $(VENV)))

.PHONY: test quickstart install

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	mkdir -p build && touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

quickstart: $(STAMP)
	$(VENV)/bin/drainage-bench sweep quickstart
	$(VENV)/bin/drainage-bench table quickstart
