# Everything runs as root on Debian 12: `make setup` installs what the rest needs.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-unit test-kernel bench clean

setup:
	bash scripts/setup.sh

demo: setup
	$(PY) demo/run.py

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

test-unit: setup
	$(PY) -m pytest -q -p no:cacheprovider -m "not kernel" tests

test-kernel: setup
	$(PY) -m pytest -q -p no:cacheprovider -m kernel tests

bench: setup
	$(PY) bench/overhead.py
	$(PY) bench/reload.py
	$(PY) bench/parsers.py
	$(PY) bench/pipeline.py
	$(PY) bench/highrate.py

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
