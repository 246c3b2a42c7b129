# Targets match what CI runs (.ci/run calls `make test`).
PYTHON ?= python3
PIP ?= $(PYTHON) -m pip
# The CPU torch build. Never install an unpinned torch: it resolves to a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install engine test test-engines test-heavy test-unit test-gpu lint goldens bench demo clean

install:
	$(PIP) install $(TORCH_PIN) numpy
	$(PIP) install -e '.[dev]'

# Make sure a Docker engine answers (installs and starts dockerd when root on Debian),
# with the base image, wheelhouse and registry the integration tests use.
engine:
	bash scripts/test-env.sh

# The README's test command: the unit and real-engine tiers (the gpu tier needs a GPU).
# On a fresh machine it installs what it needs first (make install, make engine).
test: engine
	$(PYTHON) -c "import aibuild, hatchling, hypothesis, pytest, torch" 2>/dev/null || $(MAKE) install
	. ./.aibuild-test-env && $(PYTHON) -m pytest -m "not gpu and not heavy and not engines"

# The engine-facing tiers again on the engines users run today: Docker 26.1 with the
# classic store and with the containerd image store (scripts/test-env.sh starts both
# beside the system's 20.10), then the test that builds one reproducible image on all
# three engines and gets one digest. What runs on one engine only: docs/engines.md.
ENGINE_TIERS ?= tests/integration/test_build.py tests/integration/test_publish.py \
	tests/integration/test_reproducible.py tests/integration/test_run.py
ENGINE_SELECT ?= not gpu and not heavy and not engines
ENGINE_DESELECT ?= gpus or nvidia or hook
test-engines: engine
	. ./.aibuild-test-env && for host in "$$AIBUILD_TEST_CLASSIC26_DOCKER_HOST" "$$AIBUILD_TEST_CONTAINERD26_DOCKER_HOST"; do \
		test -n "$$host" || { echo "test-engines: the Docker 26 engines are not set up (scripts/test-env.sh)" >&2; exit 1; }; \
		echo "::: engine $$host" >&2; \
		DOCKER_HOST=$$host $(PYTHON) -m pytest -m "$(ENGINE_SELECT)" -k "not ($(ENGINE_DESELECT))" $(ENGINE_TIERS) || exit 1; \
	done
	. ./.aibuild-test-env && $(PYTHON) -m pytest -m engines tests/integration/test_engines.py

# The heavy tier: minutes of cold torch builds (the twice-built reproducible torch image,
# the CUDA image from a ~3 GB wheelhouse made once in .cache). CI runs it after `make test`.
CUDA_WHEELHOUSE ?= $(CURDIR)/.cache/wheelhouse-cu130
test-heavy: engine
	PYTHON=$(PYTHON) bash scripts/make-cuda-wheelhouse.sh $(CUDA_WHEELHOUSE)
	. ./.aibuild-test-env && AIBUILD_TEST_CUDA_WHEELHOUSE=$(CUDA_WHEELHOUSE) $(PYTHON) -m pytest -m heavy

# The gpu tier, on a machine with an NVIDIA GPU: fails (never skips) when none works.
# scripts/gpu-check.sh runs it and prints the GPU figures (AIBUILD_GPU_IMAGE=REF: the
# trainer's checks inside a built CUDA image, through `aibuild run --gpus all`).
test-gpu:
	PYTHON=$(PYTHON) bash scripts/gpu-check.sh

test-unit:
	$(PYTHON) -m pytest -m "not docker and not gpu and not heavy"

lint:
	$(PYTHON) -m ruff check aibuild tests benchmarks
	$(PYTHON) -m ruff format --check aibuild tests benchmarks
	$(PYTHON) -m mypy

goldens:
	$(PYTHON) tests/unit/regen_goldens.py

# Figures against a baseline run side by side; the engine ones need `make engine`.
bench:
	$(PYTHON) benchmarks/bench_startup.py
	$(PYTHON) benchmarks/bench_train.py
	. ./.aibuild-test-env && $(PYTHON) benchmarks/bench_cache.py
	. ./.aibuild-test-env && $(PYTHON) benchmarks/bench_reproducible.py

# The main job: build the cpu profile's image and train on the bundled dataset. It needs
# only an engine, a base image and (offline) a wheelhouse, and starts nothing else.
demo:
	bash scripts/demo.sh

clean:
	rm -rf build dist .pytest_cache .mypy_cache .ruff_cache .aibuild
