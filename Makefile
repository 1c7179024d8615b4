# The README's two set-up commands: `make demo` (install, fetch the embedded model, run the main job)
# and `make test`. Everything lands in a virtual environment under $(VENV).
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# The CPU wheel of torch lies on local disk on our machines and is small; on a GPU box set
# TORCH_SPEC=torch (or keep the torch you have by pointing VENV at an environment that has it).
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test model browser

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

install: $(VENV)/.installed

model: install
	$(VENV)/bin/opsctl models pull

# The main job: `opsctl tune` on the embedded default with the cpu profile (4 trials of real
# `opsctl serve` processes under Locust load, ~4 minutes on 2 cores): reports/tune-<time>/ gets
# tune.json, trials.csv, report.html, launch.sh (the chosen `opsctl serve` command) and deploy.yaml.
# Exit code 1 (no configuration met the SLO on a busy machine) still leaves a full report: not a failure here.
demo: model
	$(VENV)/bin/opsctl tune --gpu cpu --budget-minutes 4 || [ $$? -eq 1 ]

# The report tests open reports in headless Chromium: Debian's package, driven by playwright (the dev
# extra; `playwright install` downloads a browser and is never used). Installed with apt-get when it
# is missing and we may (root, or sudo without a password); otherwise one line says the extra step.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || { \
		if [ "$$(id -u)" = 0 ]; then sudo=""; elif sudo -n true 2>/dev/null; then sudo="sudo -n"; else sudo=none; fi; \
		if [ "$$sudo" != none ] && command -v apt-get >/dev/null 2>&1; then \
			echo "installing chromium for the report tests (apt-get) ..."; \
			{ $$sudo apt-get update -qq && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
				>/dev/null 2>&1 || echo "could not install chromium: the report browser tests will skip"; \
		else echo "no chromium: run 'sudo apt-get install chromium' (or set OPSCTL_CHROMIUM) for the report browser tests"; fi; }

test: model browser
	$(PY) -m pytest -q
