# The two commands of README: `make train` (set up, then train + evaluate the default model on
# Fashion-MNIST into runs/) and `make test` (set up, then run the test suite).
VENV ?= .venv
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: setup train test test-slow lint

$(STAMP): pyproject.toml constraints.txt scripts/bootstrap.sh
	VENV=$(VENV) bash scripts/bootstrap.sh

setup: $(STAMP)

train: $(STAMP)
	$(VENV)/bin/imgcls train $(ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(ARGS)

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -q -m slow $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check imgcls tests bench
