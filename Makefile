# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates .venv on first use; later runs reuse it (reinstalling when pyproject/constraints change).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast install clean-venv

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -c "import torch, torchvision, open_clip, deepspeed, transformers, webdataset, hydra, wandb; print('environment ok: torch', torch.__version__, 'torchvision', torchvision.__version__)"
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded default: tiny InternViT + tiny LLaMA, demo data, CPU.
demo: $(STAMP)
	$(PY) -m internvl_train stage=contrastive

# The whole test suite, slow multi-process and SLURM tests included.
test: $(STAMP)
	$(PY) -m pytest

# Everything but the tests marked slow.
test-fast: $(STAMP)
	$(PY) -m pytest -m 'not slow'

clean-venv:
	rm -rf $(VENV)
