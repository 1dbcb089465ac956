# Two commands do all the setup on a fresh machine:
#   make quickstart   create/reuse .venv, install, run the quickstart sweep on digits, print its table
#   make test         create/reuse .venv, install, run the test suite
#   make lock         refresh requirements.lock: the newest versions pyproject.toml allows, in a fresh venv
# Installs take the tested versions pinned in requirements.lock (a pip constraints file).
# VENV=/some/path reuses a virtual environment elsewhere (CI keeps one in ~/.cache).
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := build/.installed$(subst /,_,$(abspath $(VENV)))

.PHONY: test quickstart install lock

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c requirements.lock -e ".[dev]"
	mkdir -p build && touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

quickstart: $(STAMP)
	$(VENV)/bin/drainage-bench sweep quickstart
	$(VENV)/bin/drainage-bench table quickstart

LOCK_VENV := build/lock-venv
lock:
	rm -rf $(LOCK_VENV) && python3 -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install -q --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install -q -e ".[dev]"
	head -n 3 requirements.lock > build/requirements.lock.new
	$(LOCK_VENV)/bin/python -m pip freeze --exclude-editable >> build/requirements.lock.new
	mv build/requirements.lock.new requirements.lock
	rm -rf $(LOCK_VENV)
