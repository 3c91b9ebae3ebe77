# Two commands on a fresh machine: `make run` and `make test`. Both build .venv if missing.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1
DRAIN_S ?= 20
KEEP_ALIVE_S ?= 5
MAX_CONNECTIONS ?= 1000

CHROMIUM ?= /usr/bin/chromium
# pytest processes for `make test` (0: one process, no xdist), files kept whole per worker
# so that each module's fixtures (tiny trained models, uvicorn processes) are built once.
TEST_WORKERS ?= 2

.PHONY: run test lint format model anomaly-eval bench soak screenshots clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: on a CPU machine this is the CPU wheel, and the project's own
# range is then already satisfied, so nothing pulls a CUDA build.
$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[train,dev]"
	touch $@

# The browser tests drive Debian's chromium (Playwright cannot download a browser here).
# Installed once when missing, if apt-get may run; if it cannot, those tests skip and say why.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then sudo=; elif sudo -n true 2>/dev/null; then sudo=sudo; \
	else echo "no $@ and no root to install it: the browser tests will skip"; exit 0; fi; \
	echo "installing chromium for the browser tests (apt-get)"; log=$$(mktemp); \
	if ! { $$sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		$$sudo apt-get install -y -qq --no-install-recommends chromium; } >$$log 2>&1; then \
		tail -n 3 $$log; echo "apt-get could not install chromium: the browser tests will skip"; fi; \
	rm -f $$log

# The same command the container runs; the app writes its own JSON access log, and
# app.connections bounds every phase of a connection (README, "Connections").
run: $(VENV)/.runtime
	VAE_DRAIN_TIMEOUT_S=$(DRAIN_S) $(BIN)/uvicorn app.main:app --host $(HOST) --port $(PORT) \
		--workers $(WORKERS) --timeout-graceful-shutdown $(DRAIN_S) --no-access-log \
		--http app.connections:Protocol --timeout-keep-alive $(KEEP_ALIVE_S) \
		--limit-concurrency $(MAX_CONNECTIONS)

test: $(VENV)/.dev | $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadfile

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(VENV)/.dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# Reproduces models/mnist: the recipe is training.config.TrainConfig's defaults.
model: $(VENV)/.dev
	$(BIN)/python -m training

# The two protocols behind the README's tables. One-class MNIST: AUROC and measured false
# alarms; per digit 275 images to train, 25 to validate, 100 to calibrate, 100 to test.
# Textures: defects on real surfaces against the baselines (docs/textures.md). Parts: the
# same on aligned views of an object, as a camera over a fixture sees it (docs/parts.md),
# and on loose ones, turned any way and off-centre, as on a belt (docs/loose/parts.md).
anomaly-eval: $(VENV)/.dev
	$(BIN)/python -m training.evaluate anomaly --architecture mlp --hidden 400,200 \
		--latent-dim 16 --epochs 85 --batch-size 32 --augment-shift 0 --warmup-epochs 0 \
		--val-fraction 0.05 --calibration-fraction 0.2 --test-fraction 0.2 \
		--score nelbo-ic --scores nelbo,iwae,recon,nelbo-ic,iwae-ic,recon-ic
	$(BIN)/python -m training.evaluate textures --work-dir runs/textures --report-dir docs
	$(BIN)/python -m training.evaluate parts --work-dir runs/parts --report-dir docs
	$(BIN)/python -m training.evaluate parts --parts retina,coins --turn 180 --shift 8 \
		--work-dir runs/parts-loose --report-dir docs/loose

bench: $(VENV)/.dev
	$(BIN)/python -m bench --update-doc

# Issue 12's soak: normal and hostile traffic together for 10 minutes, into docs/bench/soak.json.
soak: $(VENV)/.dev
	$(BIN)/python -m bench.soak

# Every view of the page at desktop and phone width, into docs/ui (the README shows them).
screenshots: $(VENV)/.dev | $(CHROMIUM)
	UI_SCREENSHOTS=docs/ui $(BIN)/python -m pytest tests/app/test_ui_browser.py -q

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
