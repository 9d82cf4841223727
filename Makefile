# rootless-groot build/test entry points. See `make help`.
SHELL := /bin/bash

PYTHON     ?= /usr/bin/python3
VENV       ?= .venv
VENV_PY    := $(VENV)/bin/python
# World-readable place for the integration tests: the unprivileged test user
# must be able to run the installed package whatever the checkout path is.
TEST_ROOT  ?= /var/tmp/rootless-groot-test
TEST_VENV  ?= $(TEST_ROOT)/venv
TEST_PY    := $(TEST_VENV)/bin/python
TEST_USER  ?= rgtest
PYTEST_ARGS ?=
TEST_TIMEOUT ?= 3000

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1

.PHONY: help venv deps test-venv run test unit bench clean torture

help:
	@echo "make venv       dev venv in $(VENV) (editable install with test extras)"
	@echo "make run        install deps (when root) and run scripts/demo.sh"
	@echo "make test       (root) system deps + test user + test venv, then pytest tests integration"
	@echo "make unit       unit tests only (tests/), any user"
	@echo "make torture    (root) 300 kill -9 iterations of issue 9's torture test"
	@echo "make bench      benchmarks"
	@echo "make peer-tests GrootFS's own integration suite against us (GROOTFS_SUITE=..., docs/peer-tests.md)"
	@echo "make clean      remove venvs and build output"

# As root in a checkout someone else owns, the dev venv (and the editable install's egg-info)
# are made as that owner: root never leaves files in the checkout that its owner cannot remove.
OWNER_UID := $(shell stat -c %u .)
ifeq ($(shell id -u),0)
ifneq ($(OWNER_UID),0)
AS_OWNER := setpriv --reuid=$(OWNER_UID) --regid=$(shell stat -c %g .) --clear-groups \
            env HOME=$(or $(shell getent passwd $(OWNER_UID) | cut -d: -f6),/nonexistent)
endif
endif

$(VENV_PY):
	$(AS_OWNER) $(PYTHON) -m venv $(VENV)

venv: $(VENV_PY)
	$(AS_OWNER) $(VENV_PY) -m pip install -q -e '.[test]'

# System packages and the test user (root only).
deps:
	@if [ "$$(id -u)" -ne 0 ]; then echo "make deps: must run as root" >&2; exit 1; fi
	bash scripts/install-deps.sh
	bash scripts/make-test-user.sh $(TEST_USER)

# Non-editable install into a world-readable venv, built from a copy of the tree
# (so a read-only checkout works and no build/ or egg-info lands in it).
test-venv:
	umask 022; set -e; \
	mkdir -p $(TEST_ROOT); chmod 0755 $(TEST_ROOT); \
	[ -x $(TEST_PY) ] || $(PYTHON) -m venv $(TEST_VENV); \
	src=$$(mktemp -d $(TEST_ROOT)/src.XXXXXX); trap 'rm -rf "$$src"' EXIT; \
	tar -C . --exclude=./.git --exclude=./$(VENV) --exclude=./build --exclude='*.egg-info' \
	    --exclude=__pycache__ -cf - . | tar -C $$src -xf -; \
	$(TEST_PY) -m pip install -q "$$src[test]"; \
	$(TEST_PY) -m pip install -q --no-deps --force-reinstall "$$src"; \
	bash scripts/fast-entry.sh $(TEST_VENV)/bin/rootless-groot; \
	chmod -R a+rX $(TEST_VENV)

run:
	@if [ "$$(id -u)" -eq 0 ]; then $(MAKE) --no-print-directory deps test-venv; fi
	$(MAKE) --no-print-directory venv
	RG_TEST_PYTHON=$(TEST_PY) RG_VENV_PYTHON=$(VENV_PY) bash scripts/demo.sh

test:
	@if [ "$$(id -u)" -ne 0 ]; then \
	    echo "make test must run as root: it installs system packages, creates the test user" >&2; \
	    echo "'$(TEST_USER)' and a test venv in $(TEST_ROOT). As a normal user, run 'make unit'." >&2; \
	    exit 1; fi
	$(MAKE) --no-print-directory deps test-venv
	$(TEST_PY) -m ruff check --no-cache --select F,E9 --output-format concise rootless_groot privileged_helper tests integration scripts
	@set +e; bt=$$(mktemp -d /tmp/rootless-groot-pytest.XXXXXX); \
	RG_TEST_PYTHON=$(TEST_PY) RG_TEST_ROOT=$(TEST_ROOT) RG_TEST_USER=$(TEST_USER) \
	    PYTHONDONTWRITEBYTECODE=1 timeout --kill-after=30 $(TEST_TIMEOUT) \
	    $(TEST_PY) -m pytest -p no:cacheprovider --basetemp="$$bt" \
	    tests integration $(PYTEST_ARGS); \
	rc=$$?; rm -rf "$$bt"; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected (exit 5), treated as success"; rc=0; fi; \
	exit $$rc

# Issue 9's torture test at full length (300 kill -9 iterations; make test runs 24). As root, like test.
TORTURE_ITERATIONS ?= 300
TORTURE_REPORT ?= $(TEST_ROOT)/torture-report.json
torture:
	@if [ "$$(id -u)" -ne 0 ]; then echo "make torture must run as root (it drops to '$(TEST_USER)')" >&2; exit 1; fi
	$(MAKE) --no-print-directory deps test-venv
	@set +e; bt=$$(mktemp -d /tmp/rootless-groot-pytest.XXXXXX); \
	RG_TEST_PYTHON=$(TEST_PY) RG_TEST_ROOT=$(TEST_ROOT) RG_TEST_USER=$(TEST_USER) PYTHONDONTWRITEBYTECODE=1 \
	    RG_TORTURE_ITERATIONS=$(TORTURE_ITERATIONS) RG_TORTURE_REPORT=$(TORTURE_REPORT) \
	    $(TEST_PY) -m pytest -p no:cacheprovider --basetemp="$$bt" integration/test_torture.py $(PYTEST_ARGS); \
	rc=$$?; rm -rf "$$bt"; echo "report: $(TORTURE_REPORT)"; exit $$rc

unit: $(VENV_PY)
	@$(VENV_PY) -c 'import pytest, rootless_groot' 2>/dev/null || $(MAKE) --no-print-directory venv
	@set +e; $(VENV_PY) -m pytest -p no:cacheprovider tests $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest: no tests collected (exit 5)"; rc=0; fi; exit $$rc

# Benchmarks (issue 5, docs/bench.md); never part of `make test`. As root: installs the peers,
# builds the test venv, then measures as $(TEST_USER). BENCH_ARGS='--quick' or '--only cold,warm'.
BENCH_ARGS ?=
BENCH_TIMEOUT ?= 3600
bench:
	@if [ "$$(id -u)" -ne 0 ]; then echo "make bench must run as root (it drops to '$(TEST_USER)')" >&2; exit 1; fi
	INSTALL_BENCH_DEPS=1 bash scripts/install-deps.sh
	bash scripts/make-test-user.sh $(TEST_USER)
	$(MAKE) --no-print-directory test-venv
	PYTHONDONTWRITEBYTECODE=1 timeout --kill-after=30 $(BENCH_TIMEOUT) \
	    $(TEST_PY) -m rootless_groot.bench --user $(TEST_USER) $(BENCH_ARGS)

# GrootFS's own integration suite, already built elsewhere, against our CLI as root and rootless
# (docs/peer-tests.md); never part of `make test`. PEER_ARGS='--modes root' or '--fs none'.
GROOTFS_SUITE      ?=
GROOTFS_SUITE_DIR  ?=
GROOTFS_NAMESPACER ?=
PEER_WORKDIR       ?= $(TEST_ROOT)/peer-tests
PEER_ARGS          ?=
.PHONY: peer-tests
peer-tests:
	@GROOTFS_SUITE="$(GROOTFS_SUITE)" GROOTFS_SUITE_DIR="$(GROOTFS_SUITE_DIR)" GROOTFS_NAMESPACER="$(GROOTFS_NAMESPACER)" \
	    $(PYTHON) scripts/peer_tests.py --check --bin none --workdir none
	@if [ "$$(id -u)" -ne 0 ]; then echo "make peer-tests must run as root (it drops to '$(TEST_USER)')" >&2; exit 1; fi
	$(MAKE) --no-print-directory deps test-venv install-helper
	mkdir -p $(PEER_WORKDIR); chmod 0755 $(TEST_ROOT) $(PEER_WORKDIR)
	printf '#!/bin/sh\nexec %s "$$@"\n' "$(TEST_VENV)/bin/rootless-groot" > $(PEER_WORKDIR)/grootfs
	chmod 0755 $(PEER_WORKDIR)/grootfs
	GROOTFS_SUITE="$(GROOTFS_SUITE)" GROOTFS_SUITE_DIR="$(GROOTFS_SUITE_DIR)" GROOTFS_NAMESPACER="$(GROOTFS_NAMESPACER)" \
	    $(PYTHON) scripts/peer_tests.py --bin $(PEER_WORKDIR)/grootfs --workdir $(PEER_WORKDIR) \
	    --user $(TEST_USER) $(PEER_ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	-@if [ "$$(id -u)" -eq 0 ]; then rm -rf $(TEST_ROOT); fi

# --- quota helper (issue 4): the setuid launcher and the root-owned helper (docs/quota.md)
HELPER_DIR   ?= /usr/local/libexec/rootless-groot
HELPER_GROUP ?= root
HELPER_MODE  ?= 4755
HELPER_BIN   := build/rootless-groot-quota
HELPER_CFLAGS := -O2 -Wall -Wextra -Werror -fstack-protector-strong -D_FORTIFY_SOURCE=3 -fPIE -pie \
                 -Wl,-z,relro,-z,now

.PHONY: helper install-helper apparmor-profile install-apparmor

helper: $(HELPER_BIN)

$(HELPER_BIN): privileged_helper/launcher.c
	@mkdir -p build
	$(CC) $(HELPER_CFLAGS) -DHELPER_DIR='"$(HELPER_DIR)"' -o $@ $<

# As root: the launcher setuid root and the helper package, all root-owned and not writable
# by anyone else (the launcher refuses to run otherwise).
install-helper: $(HELPER_BIN)
	@if [ "$$(id -u)" -ne 0 ]; then echo "make install-helper: must run as root" >&2; exit 1; fi
	install -d -o root -g root -m 0755 $(HELPER_DIR) $(HELPER_DIR)/privileged_helper
	rm -rf $(HELPER_DIR)/privileged_helper/__pycache__
	install -o root -g root -m 0644 privileged_helper/*.py $(HELPER_DIR)/privileged_helper/
	install -o root -g $(HELPER_GROUP) -m $(HELPER_MODE) $(HELPER_BIN) $(HELPER_DIR)/rootless-groot-quota
	install -d -o root -g root -m 0755 /etc/rootless-groot /etc/rootless-groot/stores.d
	install -d -o root -g root -m 0700 /var/lib/rootless-groot-helper

# --- AppArmor (Ubuntu 24.04+, kernel.apparmor_restrict_unprivileged_userns=1): a profile that
# lets the installed command create user namespaces (README). RG_BIN: the installed command.
RG_BIN ?= $(shell command -v rootless-groot 2>/dev/null)
APPARMOR_DIR ?= /etc/apparmor.d
APPARMOR_OUT ?= $(or $(TMPDIR),/tmp)/apparmor-rootless-groot

apparmor-profile:
	@[ -n "$(RG_BIN)" ] || { echo "no rootless-groot on PATH: make $@ RG_BIN=/path/to/bin/rootless-groot" >&2; exit 1; }
	sed "s|@RG_BIN@|$(realpath $(RG_BIN))|" scripts/apparmor-rootless-groot > $(APPARMOR_OUT)
	@echo "$(APPARMOR_OUT): profile for $(realpath $(RG_BIN))"

install-apparmor: apparmor-profile
	@if [ "$$(id -u)" -ne 0 ]; then echo "make install-apparmor: must run as root" >&2; exit 1; fi
	install -o root -g root -m 0644 $(APPARMOR_OUT) $(APPARMOR_DIR)/rootless-groot
	apparmor_parser -r $(APPARMOR_DIR)/rootless-groot
