# The two commands of the README: `make demo` and `make test`. Both set up first:
# Debian packages (mosquitto, dataset-fashion-mnist), then .venv with every extra.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.edgecascade-installed
ARTIFACTS := artifacts

PACKAGES := device_sdk edge_gateway cloud_service training federation tools

.PHONY: demo test setup system-deps lint clean

demo: setup
	$(BIN)/edgecascade demo --model $(ARTIFACTS)/model \
		--report $(ARTIFACTS)/demo-report.json --predictions $(ARTIFACTS)/demo-predictions.jsonl

test: setup lint
	$(BIN)/python -m pytest

setup: system-deps $(STAMP)

system-deps:
	@sh tools/system-deps.sh

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[all]'
	@touch $@

# mypy cannot follow the editable install's import hook: .typing/edgecascade/<package>
# links to each folder give it the installed names.
lint: setup
	@mkdir -p .typing/edgecascade
	@for p in $(PACKAGES); do ln -sfn ../../$$p .typing/edgecascade/$$p; done
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .typing *.egg-info
