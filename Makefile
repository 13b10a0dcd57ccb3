# The two commands of the README: `make demo` and `make test` (both set everything up first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export XLA_PYTHON_CLIENT_PREALLOCATE ?= false

.PHONY: setup assets demo demo-export test lint clean teacher distill-minilm results-tiny \
	results-general

setup: $(VENV)/.installed

# Reinstall when pyproject.toml changes. torch==2.13.0 is the cached CPU build (see pyproject).
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[test]"
	# TextBrewer is only a test reference for losses/schedules; --no-deps: its deps pull tensorboard.
	$(PY) -m pip install -q --no-deps textbrewer==0.2.1.post1
	# TextPruner: the reference for the head / FFN importance scores (tests/test_prune.py).
	$(PY) -m pip install -q --no-deps textpruner==1.1.post2
	touch $@

assets: setup
	$(PY) scripts/fetch_assets.py

# The main job (~15 min on a 2-core CPU): fine-tuned MiniLM teacher, distilled 3-layer student,
# no-teacher baseline, test table, HF export checked in transformers.
demo: assets
	$(PY) scripts/demo_full.py

# The quick foundation check: MiniLM -> 3-layer student -> HF export -> transformers.
demo-export: assets
	$(PY) scripts/demo.py

test: assets
	$(PY) -m ruff check flaxdistil scripts configs tests
	$(PY) -m pytest -n 2 --durations=15 tests

lint: setup
	$(PY) -m ruff format --check flaxdistil scripts configs tests
	$(PY) -m ruff check flaxdistil scripts configs tests

clean:
	rm -rf $(VENV) workdirs

# The offline teacher: fit an MLM head on the frozen all-MiniLM-L6-v2, then adapt the whole encoder
# to MLM (see configs/minilm_mlm_adapt.py for why); ~25 min on a 2-core CPU, once.
teacher: assets
	@test -f $${FLAXDISTIL_CACHE:-$$HOME/.cache/flaxdistil}/teachers/all-MiniLM-L6-v2-mlm/config.json || { \
	  $(PY) scripts/fit_mlm_head.py --config configs/minilm_mlm_head.py --workdir workdirs/minilm_head && \
	  $(PY) scripts/fit_mlm_head.py --config configs/minilm_mlm_adapt.py --workdir workdirs/minilm_adapt; }

# Issue 3's experiment: distilled 3-layer student vs the same student trained without the teacher.
distill-minilm: teacher
	$(PY) scripts/distill.py --config configs/minilm_l3.py --workdir workdirs/minilm_l3
	$(PY) scripts/distill.py --config configs/minilm_l3.py --workdir workdirs/minilm_l3_mlm_only \
	  --config.distill.kd_loss_weight=0 --config.distill.intermediate_matches=[]
	$(PY) scripts/summarize.py workdirs/minilm_l3 workdirs/minilm_l3_mlm_only

# Issue 9's task-distillation table: a random T4-tiny student (4 x 312) and the fine-tuned MiniLM
# teacher on the movie-review snippets, three arms x 3 seeds (same init per seed in every arm).
TINY_ARMS := tiny_base tiny_kd tiny_tinybert
results-tiny: assets
	$(PY) scripts/finetune.py --config configs/sentiment_minilm.py --workdir workdirs/sent_teacher
	for arm in $(TINY_ARMS); do \
	  $(PY) scripts/seeds.py --config configs/sentiment_minilm.py:$$arm --workdir workdirs/$$arm \
	    --seeds=0,1,2 --config.teacher.path=workdirs/sent_teacher/best_hf || exit 1; done
	$(PY) scripts/arms_table.py --metrics accuracy,mcc "no teacher=workdirs/tiny_base" \
	  "KD on logits=workdirs/tiny_kd" "KD + TinyBERT matches=workdirs/tiny_tinybert"

# Issue 9's general-distillation table: the same 3-layer slice of the MLM teacher distilled for the
# same 120 steps with DistilBERT's triple loss or MiniLM's attention + value-relation transfer, 3
# seeds each; held-out MLM metrics, then each student fine-tuned on the movie-review snippets with
# the same seed ({seed}: the general run of that seed). Tables: README, Results.
GD_ARMS := distilbert minilm
results-general: teacher
	for arm in $(GD_ARMS); do \
	  $(PY) scripts/seeds.py --job=general --config configs/minilm_l3.py --workdir workdirs/gd_$$arm \
	    --seeds=0,1,2 --config.distill.preset=$$arm || exit 1; \
	  $(PY) scripts/seeds.py --config configs/sentiment_minilm.py:baseline --seeds=0,1,2 \
	    --workdir workdirs/gd_$$arm/sentiment --config.student.layers= \
	    --config.student.path=workdirs/gd_$$arm/seed_{seed}/student_hf || exit 1; done
	# reference: the same 3 teacher layers fine-tuned with no general distillation at all
	$(PY) scripts/seeds.py --config configs/sentiment_minilm.py:baseline --seeds=0,1,2 \
	  --workdir workdirs/gd_none/sentiment --config.student.path=minilm-mlm
	$(PY) scripts/arms_table.py --metrics mlm_loss,mlm_accuracy \
	  "DistilBERT triple loss=workdirs/gd_distilbert" "MiniLM=workdirs/gd_minilm"
	$(PY) scripts/arms_table.py --metrics accuracy,mcc \
	  "DistilBERT triple loss=workdirs/gd_distilbert/sentiment" "MiniLM=workdirs/gd_minilm/sentiment" \
	  "no general distillation=workdirs/gd_none/sentiment"
