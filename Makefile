# Two entry points, each doing its own idempotent set-up on a machine without ROS:
#   make demo   learn the 2-link reach through the ROS 2 node graph (lockstep PyBullet arm)
#   make test   run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mbpl-installed
BENCH_STAMP := $(VENV)/.mbpl-bench-installed

# DDS stays on this machine; each make invocation gets its own domain unless one is given.
# The package's Fast DDS profile (loopback only, mbpl_ros/dds) is used unless one is set.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
ifeq ($(FASTDDS_DEFAULT_PROFILES_FILE)$(FASTRTPS_DEFAULT_PROFILES_FILE),)
export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/mbpl_ros/dds/fastdds_loopback.xml
endif
export ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 90 + 1 )))
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): requirements.txt setup.py package.xml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/mbpl sim --config config/sim_reacher_2link.yaml --output runs/demo --overwrite

test: $(STAMP)
	$(PY) -m pytest test

$(BENCH_STAMP): $(STAMP) requirements-bench.txt
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $(BENCH_STAMP)

bench: $(BENCH_STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info runs
