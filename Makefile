# The two commands (see README):  make demo  ·  make test
# Each one sets up what it needs first: a virtual environment in .venv (packages from
# requirements.lock through uv, whose wheel cache lives outside the clone in ~/.cache/uv)
# and the Apache Kafka broker jars (Maven, cached in ~/.m2).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cat requirements.lock pyproject.toml | sha256sum | cut -c1-16)

.PHONY: install demo test test-all lock clean

install: $(STAMP)

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --disable-pip-version-check "uv>=0.9,<1"
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements.lock
	$(BIN)/uv pip install --quiet --python $(BIN)/python --no-deps -e .
	$(BIN)/gensar infra fetch
	@rm -f $(VENV)/.installed-* && touch $@

demo: install
	$(BIN)/gensar demo

test: install
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)  # the demo's status-page test
	$(BIN)/python -X faulthandler -m pytest -m "not slow"  # -X faulthandler: a crash after the last test still prints its stack

# Everything, including the slow tests (the demo's Ctrl-C-and-resume run, ~10 min).
test-all: install
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	$(BIN)/python -X faulthandler -m pytest

# Re-resolve the pinned environment after editing pyproject.toml.
lock:
	$(BIN)/uv pip compile pyproject.toml --extra test --python-version 3.11 --quiet -o requirements.lock

clean:
	rm -rf $(VENV)
