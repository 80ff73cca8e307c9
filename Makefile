# vgg_keras: every target installs the project into its venv on first use, so `make train` and
# `make test` each work as the first command on a fresh machine.
#
# TF=2 (default): Python >= 3.10 + TensorFlow 2.16-2.21, in .venv.
# TF=1.15: Python 3.7 + TensorFlow 1.15.5 (the reference's and Ascend's stack), in .venv-tf115,
#          from the pins in requirements/tf115.txt.  PYTHON37=/path/to/python3.7 overrides the search.
TF ?= 2
ifeq ($(TF),2)
PYTHON ?= python3
VENV   := .venv
else ifeq ($(TF),1.15)
VENV   := .venv-tf115
else
$(error TF=$(TF): expected 2 (default) or 1.15)
endif
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# The first Python 3.7 that really runs: $(PYTHON37), `python3.7` (a pyenv shim fails unless
# 3.7 is selected), then pyenv's own versions folder.
define find_python37
for p in $(PYTHON37) python3.7 $$(pyenv root 2>/dev/null)/versions/3.7*/bin/python3.7 \
	$$HOME/.pyenv/versions/3.7*/bin/python3.7; do \
	"$$p" -c 'import sys; assert sys.version_info[:2] == (3, 7)' >/dev/null 2>&1 && echo "$$p" && break; \
done
endef

DATA    ?=
SRC     ?=
CKPT    ?=
# TF 1.15 runs get folders of their own: a TF 2 run there would be resumed, not started.
LOG_DIR ?= runs/$(if $(DATA),vgg16,demo)$(if $(filter 1.15,$(TF)),-tf115)
ARGS    ?=
DEMO    := data/demo

.PHONY: install data train eval test test-quick lint bench clean

install: $(STAMP)

ifeq ($(TF),2)
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)
else
# The pins first, then the project without dependencies (what a CANN host does), then pip check:
# a multi-package install can fail quietly when one pin does not resolve.
$(STAMP): pyproject.toml requirements/tf115.txt
	@test -x $(PY) || { py=$$($(find_python37)); \
		test -n "$$py" || { echo "error: TF=1.15 needs Python 3.7: none found (set PYTHON37=/path/to/python3.7)" >&2; exit 2; }; \
		echo "$$py -m venv $(VENV)"; "$$py" -m venv $(VENV); }
	$(PY) -m pip install --quiet --upgrade "pip<24.1"
	$(PY) -m pip install --quiet -r requirements/tf115.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	touch $(STAMP)
endif

# `make data` builds the embedded demo dataset; `make data SRC=/imagenet DATA=/out` converts
# ImageNet-style folders into TF-slim TFRecord shards.
data: $(STAMP)
ifeq ($(SRC),)
	$(PY) -m vgg_keras.tools.demo $(or $(DATA),$(DEMO))
else
	$(PY) -m vgg_keras.tools.convert $(SRC) $(or $(DATA),data/imagenet) $(ARGS)
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
# one model.ckpt-N prefix, told apart by the name (a folder in a bucket is no local directory);
# DATA= the validation shards (default: the run's config.json).
EVAL_CKPT = $(or $(CKPT),$(LOG_DIR))
eval: $(STAMP)
	$(PY) run_eval.py $(if $(findstring model.ckpt-,$(notdir $(EVAL_CKPT))),--ckpt,--eval_dir) \
		$(EVAL_CKPT) $(if $(DATA),--data_dir $(DATA)) $(ARGS)

# `make test` runs everything (CI), lists each skipped test with its reason and ends with the
# 15 slowest tests, so the suite's cost stays visible; `make test-quick` leaves out the tests
# marked slow (trainings, the demo run, subprocesses).  Two pytest processes (pytest-xdist), a
# test file each at a time.  With TF=1.15 the suite runs what that stack can change (compat,
# graphs, checkpoints, the loop, the programs end to end); tests/conftest.py lists the rest.
TEST_PROCESSES ?= 2
PYTEST := $(PY) -m pytest -q -rs -n $(TEST_PROCESSES) --dist loadfile --durations 15
test: $(STAMP)
	$(PYTEST) $(ARGS)

test-quick: $(STAMP)
	$(PYTEST) -m "not slow" $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(PY) -m bench.run_all $(ARGS)

clean:
	rm -rf runs data/demo .pytest_cache build *.egg-info
