# Two commands do everything on a fresh machine:
#   make demo   set up .venv, then plan and train a small CNN on local functions
#   make test   set up .venv, then lint and run the test suite
VENV ?= .venv
export VENV

.PHONY: setup demo test bench clean
setup: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh

demo: setup
	$(VENV)/bin/funcpipe train $(ARGS)

test: setup
	bash scripts/test.sh $(ARGS)

bench: setup
	$(VENV)/bin/python bench/collectives.py
	$(VENV)/bin/python bench/pipeline.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .ruff_cache
