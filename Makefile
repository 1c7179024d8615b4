# The README's two set-up commands: `make demo` (install, fetch the embedded model, run the main job)
# and `make test`. Everything lands in a virtual environment under $(VENV).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on local disk on our machines and is small; on a GPU box set
# TORCH_SPEC=torch (or keep the torch you have by pointing VENV at an environment that has it).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test model

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

model: install
	$(VENV)/bin/opsctl models pull

# The main job until `opsctl tune` lands: serve the embedded model, load-test it over HTTP with
# Locust (`opsctl bench`), then the engine against plain transformers offline; each writes
# reports/<run-id>/result.json, per-request CSVs and report.html.
DEMO_PORT ?= 23399
demo: model
	@mkdir -p reports
	@$(VENV)/bin/opsctl serve --server-port $(DEMO_PORT) --max-batch-size 16 > reports/demo-serve.log 2>&1 & \
	pid=$$!; trap 'kill $$pid 2>/dev/null; wait $$pid 2>/dev/null' EXIT; \
	curl -sf --retry 150 --retry-connrefused --retry-delay 2 -o /dev/null http://127.0.0.1:$(DEMO_PORT)/health \
		|| { echo "server did not start: see reports/demo-serve.log"; exit 1; }; \
	$(VENV)/bin/opsctl bench --url http://127.0.0.1:$(DEMO_PORT) --dataset chat --output-len 64 --num-requests 40 --concurrency 1,4 --run-id demo-http
	$(VENV)/bin/opsctl bench offline --workload mixed --peer generate --run-id demo-offline

test: model
	$(PY) -m pytest -q
