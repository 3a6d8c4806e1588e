# Two entry points, each doing its own idempotent set-up on a machine without ROS:
#   make demo   learn the 2-link reach through the ROS 2 node graph (lockstep PyBullet arm)
#   make test   run the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.mbpl-installed
BENCH_STAMP := $(VENV)/.mbpl-bench-installed
# The PETS peer of bench/sample_efficiency.py (mbrl-lib) in a venv of its own: mbrl's pins
# clash with the main venv's (requirements-pets.txt says which and how they are met).
PETS_VENV := .venv-pets
PETS_PY := $(PETS_VENV)/bin/python
PETS_STAMP := $(PETS_VENV)/.mbpl-pets-installed
# The ament_python package (its own folder, so that colcon finds both packages).
PKG := mbpl_ros
# The interface package (ament_cmake + rosidl), built with cmake into the venv itself.
IFACE := mbpl_ros_interfaces
IFACE_BUILD := build/$(IFACE)
IFACE_STAMP := $(VENV)/.mbpl-interfaces-installed
IFACE_SOURCES := $(IFACE)/CMakeLists.txt $(IFACE)/package.xml \
	$(wildcard $(IFACE)/msg/*.msg $(IFACE)/srv/*.srv $(IFACE)/action/*.action)

# DDS stays on this machine; each make invocation gets its own domain unless one is given.
# The package's Fast DDS profile (loopback only, $(PKG)/mbpl_ros/dds) is used unless one is set.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
ifeq ($(FASTDDS_DEFAULT_PROFILES_FILE)$(FASTRTPS_DEFAULT_PROFILES_FILE),)
export FASTDDS_DEFAULT_PROFILES_FILE := $(CURDIR)/$(PKG)/mbpl_ros/dds/fastdds_loopback.xml
endif
export ROS_DOMAIN_ID ?= $(shell echo $$(( $$$$ % 90 + 1 )))
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test bench clean

setup: $(STAMP) $(IFACE_STAMP)

$(STAMP): requirements.txt $(PKG)/setup.py $(PKG)/package.xml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e ./$(PKG)
	touch $(STAMP)

# Rebuilt from a clean build directory whenever an interface file or the venv's packages
# change (an incremental build keeps stale generated code; the C extensions compile against
# the venv's numpy), after removing what the previous build installed.
$(IFACE_STAMP): $(STAMP) $(IFACE_SOURCES)
	@if [ -f $(IFACE_BUILD)/install_manifest.txt ]; then \
	  xargs -d '\n' rm -f < $(IFACE_BUILD)/install_manifest.txt; fi
	@rm -rf $(IFACE_BUILD) && mkdir -p $(IFACE_BUILD)
	@echo "building $(IFACE) (log: $(IFACE_BUILD).log)"
	@( cmake -S $(IFACE) -B $(IFACE_BUILD) -DCMAKE_INSTALL_PREFIX=$(abspath $(VENV)) \
	    -DCMAKE_PREFIX_PATH=$(abspath $(VENV)) -DPython3_EXECUTABLE=$(abspath $(PY)) \
	    -DBUILD_TESTING=OFF && cmake --build $(IFACE_BUILD) -j2 && cmake --install $(IFACE_BUILD) \
	  ) > $(IFACE_BUILD).log 2>&1 || { tail -n 40 $(IFACE_BUILD).log; exit 1; }
	@touch $@

demo: setup
	$(VENV)/bin/mbpl sim --config $(PKG)/config/sim_reacher_2link.yaml --output runs/demo --overwrite

test: setup
	$(PY) -m pytest $(PKG)/test

$(BENCH_STAMP): $(STAMP) $(IFACE_STAMP) requirements-bench.txt
	$(PY) -m pip install --quiet -r requirements-bench.txt
	touch $(BENCH_STAMP)

# mbrl itself without its dependencies (its hydra-core 1.0.3 pin does not import on Python
# 3.11); everything else from the file first. mbpl_ros comes on the path from bench/.
$(PETS_STAMP): requirements-pets.txt
	test -x $(PETS_PY) || $(PYTHON) -m venv $(PETS_VENV)
	$(PETS_PY) -m pip install --quiet --upgrade pip
	$(PETS_PY) -m pip install --quiet -r <(grep -v '^mbrl==' requirements-pets.txt)
	$(PETS_PY) -m pip install --quiet --no-deps $$(grep '^mbrl==' requirements-pets.txt)
	touch $(PETS_STAMP)

bench: $(BENCH_STAMP) $(PETS_STAMP)
	$(PY) bench/run_all.py

clean:
	rm -rf $(VENV) $(PETS_VENV) build $(PKG)/*.egg-info runs
