# Two entry points for a fresh machine (see README): `make demo` and `make test`.
# Each creates .venv on first use; later runs reuse it (reinstalling when pyproject/constraints change).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast install clean-venv java

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[dev]'
	$(PY) -c "import torch, torchvision, open_clip, deepspeed, transformers, webdataset, hydra, wandb; print('environment ok: torch', torch.__version__, 'torchvision', torchvision.__version__)"
	@$(MAKE) --no-print-directory java
	touch $(STAMP)

# pycocoevalcap's PTB tokenizer (captioning metrics) runs on Java: installed with apt where we are root,
# otherwise a note (the metrics then use the fallback tokenizer and say so: ptb_tokenizer=0).
java:
	@command -v java >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    (apt-get install -y -qq default-jre-headless >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq default-jre-headless >/dev/null 2>&1)) \
	    || echo "note: could not install Java (default-jre-headless); captions are scored with the fallback tokenizer"; \
	  else \
	    echo "note: no Java: install default-jre-headless for pycocoevalcap's PTB tokenizer (captions are scored with the fallback tokenizer, labelled ptb_tokenizer=0)"; \
	  fi; }

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
