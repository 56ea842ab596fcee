# XenAoE Panel. `make demo` runs it with a lab cluster; `make test` runs every test.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# Every target here runs with the lab cluster: the lab's settings (xenaoe_panel/settings_lab.py).
export DJANGO_SETTINGS_MODULE := xenaoe_panel.settings_lab
PORT ?= 8000
TEST_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/xenaoe

.PHONY: install demo stop test chaos slow lint bench clean

install:
	scripts/install.sh

demo: install
	scripts/demo.sh start

stop:
	scripts/demo.sh stop

lint: install
	$(VENV)/bin/ruff check .

test: install
	scripts/services.sh
	$(VENV)/bin/ruff check .
	DATABASE_URL=sqlite://:memory: $(PY) manage.py makemigrations --check --dry-run >/dev/null
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

# The fault suite (tests/chaos/, docs/reliability.md): every case, one line each, then the count.
chaos: install
	scripts/services.sh
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest tests/chaos -p no:cacheprovider $(PYTEST_ARGS)

# What `make test` leaves out for time, besides the fault suite: full guest boots (an OS from the
# default image, a RAID1 guest, an install from an ISO), each with its fast part in `make test`.
slow: install
	scripts/services.sh
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m pytest -m "slow and not chaos" $(PYTEST_ARGS)

bench: install
	scripts/services.sh
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.job_history
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.vm_list
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.console
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.scale
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.progress
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.creation
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.provisioning
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.migration
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.failover
	BENCH_FAILOVER_INTERVAL_S=1 DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.failover
	DATABASE_URL=$(TEST_DATABASE_URL) $(PY) -m bench.monitor_scale
	$(PY) -m bench.report

clean: stop
	rm -rf .run staticfiles
