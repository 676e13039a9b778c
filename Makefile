# The two quick-start commands: `make demo` and `make test`. Only Python >= 3.11 and make needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PLUGINS := $(wildcard plugins/*)
# The request-path modules mypyc compiles (setup.py): editing one means building again.
COMPILED := $(shell $(PYTHON) -c "import tomllib; print(*(f'core/lbx/{m}.py' for m in \
	tomllib.load(open('pyproject.toml', 'rb'))['tool']['lbx']['compiled']))")

.PHONY: demo test check pytest clean

demo: $(STAMP)
	@echo "lbx demo: two local backends behind lbx on http://127.0.0.1:6188"
	@echo "  try:  curl -i http://127.0.0.1:6188/      (run it again: the backend alternates)"
	@echo "  stop: Ctrl-C"
	LBX_LOG=$${LBX_LOG:-debug} $(BIN)/lbx serve -c example_conf/demo.yaml

test: check pytest

check: $(STAMP)
	$(BIN)/ruff check core plugins contrib tests bench conftest.py setup.py .ci/wheel-smoke
	$(BIN)/ruff format --check core plugins contrib tests bench conftest.py setup.py .ci/wheel-smoke
	$(BIN)/mypy
	$(BIN)/mypy --strict .ci/wheel-smoke

pytest: $(STAMP)
	$(BIN)/python -m pytest

$(STAMP): pyproject.toml setup.py $(COMPILED) $(foreach p,$(PLUGINS),$(p)/pyproject.toml)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# The kernel's distribution was lbx before it became lbx-core (lbx is another project on
	@# the package index): the old name's metadata, left in core/, would still be found.
	rm -rf core/lbx.egg-info
	$(BIN)/python -m pip install --quiet -e '.[test]' $(foreach p,$(PLUGINS),-e $(p))
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build core/*.so core/lbx/*.so core/*.egg-info
