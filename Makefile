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

# specvla_msgs (sibling interface package) is generated with colcon and
# installed into the venv prefix: the venv's lib/ is already on the ROS wheels'
# LD_LIBRARY_PATH and its site-packages on sys.path, so `from specvla_msgs.msg
# import SafetyVerdict` works in python, pytest and console scripts alike.
MSG_STAMP := $(VENV)/.specvla_msgs_stamp
MSG_SRCS := $(wildcard specvla_msgs/msg/*.msg specvla_msgs/srv/*.srv) specvla_msgs/CMakeLists.txt specvla_msgs/package.xml
ABS_VENV = $(abspath $(VENV))

$(MSG_STAMP): $(STAMP) $(MSG_SRCS)
	AMENT_PREFIX_PATH=$(ABS_VENV) CMAKE_PREFIX_PATH=$(ABS_VENV) PATH=$(ABS_VENV)/bin:$$PATH \
	  $(VENV)/bin/colcon --log-level error --log-base build/colcon_log build --base-paths specvla_msgs \
	  --build-base build/msgs --install-base $(ABS_VENV) --merge-install \
	  --event-handlers console_direct- --cmake-args -DPython3_EXECUTABLE=$(ABS_VENV)/bin/python -DBUILD_TESTING=OFF
	touch $(MSG_STAMP)

setup: $(STAMP) $(MSG_STAMP)

test: setup
	$(PY) -m pytest -q test

demo: setup
	$(PY) -m specvla_ros.apps.demo

bench: setup
	$(VENV)/bin/specvla_bench

clean:
	rm -rf build install log
