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

# The main job until `opsctl tune` lands: the engine against plain transformers on the embedded
# model (same process, same workload), result JSON + per-request CSV under reports/.
demo: model
	$(VENV)/bin/opsctl bench offline --workload mixed --peer generate

test: model
	$(PY) -m pytest -q
