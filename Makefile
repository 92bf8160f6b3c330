# Newcomers: `make run` serves the sample city; `make test` runs the test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SAMPLE_PBF := data/samples/helsinki.osm.pbf

.PHONY: install run test sample bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

sample: install $(SAMPLE_PBF)

$(SAMPLE_PBF):
	$(PY) data/samples/fetch_sample.py

# Serve the sample city with 2000 simulated vehicles; prints the URL; Ctrl-C stops cleanly.
run: install sample
	$(VENV)/bin/traffic serve --network $(SAMPLE_PBF) --simulate 2000

test: install sample
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/network_io.py

clean:
	rm -rf $(VENV) .pytest_cache
