# p2pd — the two commands a newcomer needs are `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv test lint format typecheck pytest bench demo clean install uninstall lock check-lock wheelhouse

venv: $(STAMP)

# Exactly the lock (requirements/*.txt, every file checked by its hash), then the
# project itself, editable; whatever an older lock left in the venv is removed.
$(STAMP): pyproject.toml requirements/dev.txt requirements/build.txt
	$(PYTHON) -m venv $(VENV)
	$(PYTHON) scripts/lock.py install $(VENV) dev --project . --editable
	$(BIN)/python -m p2pctl.launcher $(BIN)/p2pctl  # as install.sh does: a quicker start
	touch $(STAMP)

# Resolves requirements/*.txt again from pyproject.toml with uv, keeping the pins
# that still fit; UPGRADE=1 takes the newest versions the ranges allow.
lock: venv
	$(BIN)/python scripts/lock.py compile $(if $(UPGRADE),--upgrade)

# Fails when pyproject.toml changed since the lock was made (make test runs it).
check-lock: venv
	$(BIN)/python scripts/lock.py check

lint: venv check-lock
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

typecheck: venv
	$(BIN)/mypy
	$(BIN)/mypy --strict scripts/lock.py

pytest: venv
	$(BIN)/pytest

test: lint typecheck pytest

# Needs nginx, curl, openssl and aria2c for the references (apt-get install nginx-light curl
# openssl aria2).
bench: venv
	$(BIN)/python bench/registry_load.py
	$(BIN)/python bench/transfer.py
	$(BIN)/python -m bench.swarm
	$(BIN)/python -m bench.search_cost
	$(BIN)/python bench/index_scale.py
	$(BIN)/python -m bench.small_files
	$(BIN)/python -m bench.memory
	$(BIN)/python -m bench.cli

# Issue 13's scale benchmark (~10 min; needs redis-server): N virtual peers
# against one and two registryd, real p2pd among them. QUICK=1 for a smoke run.
.PHONY: bench-scale
bench-scale: venv
	$(BIN)/python -m bench.scale $(if $(QUICK),--quick)

demo: venv
	bash scripts/demo.sh

# As root: the package in /opt/p2pd, commands in /usr/local/bin, the units,
# the user p2pd, and /etc/p2pd.toml + /etc/registryd.toml where absent.
# WHEELHOUSE=DIR installs offline from wheels made by `make wheelhouse WHEELHOUSE=DIR`.
install:
	bash scripts/install.sh $(if $(WHEELHOUSE),--wheelhouse $(WHEELHOUSE))

# The locked runtime's wheels and p2pd's, for `make install WHEELHOUSE=DIR` on a host
# without network (same architecture, CPython 3.11 or newer).
wheelhouse: venv
	$(BIN)/python scripts/lock.py wheelhouse $(or $(WHEELHOUSE),wheelhouse)

# Removes what install put in place; keeps config, secrets and data.
uninstall:
	bash scripts/install.sh --uninstall

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# The hostile suite's seeded fault loop at length: kill -9 mid-transfer, restart, verify.
# P2PD_FAULT_ROUNDS=N for another length, P2PD_FAULT_SEED=S to replay a run.
.PHONY: soak
soak: venv
	P2PD_FAULT_ROUNDS=$${P2PD_FAULT_ROUNDS:-50} $(BIN)/pytest -s -p no:cacheprovider tests/hostile/test_faults.py
