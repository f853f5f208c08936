# One entry point for a fresh machine. `make demo` and `make test` are the
# two commands the README promises; both set everything up first.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.specvla_deps_stamp

.PHONY: setup test demo bench clean

$(STAMP): requirements.txt setup.py
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	# robosuite ships the Panda MJCF assets; it is never imported, so no deps.
	$(PIP) install -q --no-deps robosuite==1.5.2
	$(PIP) install -q --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

test: setup
	$(PY) -m pytest -q test

demo: setup
	$(PY) -m specvla_ros.bench.demo

bench: setup
	$(VENV)/bin/specvla_bench

clean:
	rm -rf build install log
