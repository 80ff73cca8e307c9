# vgg_keras: every target installs the project into .venv on first use, so `make train` and
# `make test` each work as the first command on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

DATA    ?=
SRC     ?=
CKPT    ?=
LOG_DIR ?= runs/$(if $(DATA),vgg16,demo)
ARGS    ?=
DEMO    := data/demo

.PHONY: install data train eval test lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

# `make data` builds the embedded demo dataset; `make data SRC=/imagenet DATA=/out` converts
# ImageNet-style folders into TF-slim TFRecord shards.
data: $(STAMP)
ifeq ($(SRC),)
	$(PY) -m vgg_keras.data.demo $(or $(DATA),$(DEMO))
else
	$(PY) -m vgg_keras.data.convert $(SRC) $(or $(DATA),data/imagenet) $(ARGS)
endif

# `make train` trains the demo network; `make train DATA=/path` the full VGG16 recipe.
train: $(STAMP)
ifeq ($(DATA),)
	$(PY) run_train.py --preset demo --log_dir $(LOG_DIR) $(ARGS)
else
	$(PY) run_train.py --data_dir $(DATA) --log_dir $(LOG_DIR) $(ARGS)
endif

# `make eval` evaluates every checkpoint of the run `make train` wrote with the same DATA
# (runs/demo, or runs/vgg16 with DATA=).  CKPT= names a run folder (every checkpoint in it) or
# one model.ckpt-N prefix; DATA= the validation shards (default: the run's config.json).
EVAL_CKPT = $(or $(CKPT),$(LOG_DIR))
eval: $(STAMP)
	$(PY) run_eval.py $$(test -d $(EVAL_CKPT) && echo --eval_dir || echo --ckpt) \
		$(EVAL_CKPT) $(if $(DATA),--data_dir $(DATA)) $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) -m bench.run_all $(ARGS)

clean:
	rm -rf runs data/demo .pytest_cache build *.egg-info
