# The two commands of the README: `make demo` and `make test` (both set everything up first).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export XLA_PYTHON_CLIENT_PREALLOCATE ?= false

.PHONY: setup assets demo demo-export test lint clean teacher distill-minilm results-tiny \
	results-general sent-teachers results-protocols results-protocols-bbc results-teachers \
	results-ablation results-compress results-vocab results-tasktypes results-multitask results-compare results-antiberty

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

# The main job (~20 min on a 2-core CPU): fine-tuned MiniLM teacher, four 3-layer students (the
# teacher's slice and the pretrained slice, each with and without KD), test table, HF exports
# checked in transformers.
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
# to MLM (see configs/minilm_mlm_adapt.py for why); ~25 min on a 2-core CPU, once. Both stages
# install into the same directory, so the stage-2 marker, not config.json, says it is finished: a
# run stopped during stage 2 resumes it instead of leaving the head-only teacher in place.
MLM_TEACHER = $${FLAXDISTIL_CACHE:-$$HOME/.cache/flaxdistil}/teachers/all-MiniLM-L6-v2-mlm
teacher: assets
	@test -f $(MLM_TEACHER)/.adapted || { \
	  $(PY) scripts/fit_mlm_head.py --config configs/minilm_mlm_head.py --workdir workdirs/minilm_head && \
	  $(PY) scripts/fit_mlm_head.py --config configs/minilm_mlm_adapt.py --workdir workdirs/minilm_adapt && \
	  touch $(MLM_TEACHER)/.adapted; }

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

# Three MiniLM teachers fine-tuned on the movie-review snippets with train.seed 4 (the default), 1, 2.
sent-teachers: assets
	$(PY) scripts/finetune.py --config configs/sentiment_minilm.py --workdir workdirs/sent_teacher
	for s in 1 2; do $(PY) scripts/finetune.py --config configs/sentiment_minilm.py \
	  --workdir workdirs/sent_teacher_s$$s --config.train.seed=$$s || exit 1; done

# Issue 15's fair task-distillation tables: 3-layer students from one init per protocol (the
# fine-tuned teacher's slice, or the pretrained MiniLM's), each with and without KD, 3 seeds.
# $(call protocols,CONFIG,PREFIX,TEACHER_DIR): the four arms in workdirs/PREFIX_<arm>, two tables.
PROTOCOL_ARMS := baseline distill_pre baseline_ft distill
define protocols
	for arm in $(PROTOCOL_ARMS); do \
	  $(PY) scripts/seeds.py --config configs/$(1).py:$$arm --workdir workdirs/$(2)_$$arm \
	    --seeds=0,1,2 --config.teacher.path=$(3) || exit 1; done
	$(PY) scripts/arms_table.py --metrics accuracy,mcc "pretrained slice, no teacher=workdirs/$(2)_baseline" \
	  "pretrained slice, KD=workdirs/$(2)_distill_pre"
	$(PY) scripts/arms_table.py --metrics accuracy,mcc "teacher slice, no teacher=workdirs/$(2)_baseline_ft" \
	  "teacher slice, KD=workdirs/$(2)_distill"
endef
# Recursive (=): SENT_L is defined further down, with results-compress.
SENT_T = --config.teacher.path=$(SENT_L)
results-protocols: sent-teachers
	$(call protocols,sentiment_minilm,sent,$(SENT_L))

# The same four arms on BBC topics, against the BBC MiniLM-L6 teacher (train.seed 4, the
# config's default; BBC_L, defined with results-compress): 2 epochs each, 3 seeds.
results-protocols-bbc: assets
	test -f $(BBC_L)/config.json || $(PY) scripts/finetune.py --config configs/bbc_minilm.py \
	  --workdir workdirs/bbc_teacher
	$(call protocols,bbc_minilm,bbc,$(BBC_L))

# Issue 10's multi-teacher and cache tables: the pretrained slice distilled from one teacher (live)
# or from the three (their mean logits, cached), 3 seeds; one cached single-teacher run to compare
# time and metrics with the live one; the teachers' own ensemble.
results-teachers: results-protocols
	$(PY) scripts/seeds.py --config configs/sentiment_minilm.py:distill_pre --seeds=1 $(SENT_T) \
	  --workdir workdirs/sent_distill_pre_cached --config.teacher.cache=True
	$(PY) scripts/seeds.py --config configs/sentiment_minilm.py:multi_kd --seeds=0,1,2 \
	  --workdir workdirs/sent_multi_kd --config.teacher.cache=True
	$(PY) scripts/evaluate_teachers.py --config configs/sentiment_minilm.py:multi_kd \
	  --workdir workdirs/sent_teachers_ensemble
	$(PY) scripts/arms_table.py --metrics accuracy,mcc "one teacher=workdirs/sent_distill_pre" \
	  "three teachers=workdirs/sent_multi_kd"

# Issue 15's DistilBERT ablation (its Table 4) on the offline general distillation: the triple
# loss (workdirs/gd_distilbert, results-general) against no L_ce, no L_cos, no L_mlm and a randomly
# initialised student, the same 120 steps x 3 seeds; each student then fine-tuned on the movie
# snippets with the same seed. ~9 min per general run + ~4 min per fine-tune on the 2-core CPU.
ABL_no_ce := --config.distill.kd_loss_weight=0.0
ABL_no_cos := --config.distill.intermediate_matches=[]
ABL_no_mlm := --config.distill.hard_label_weight=0.0
ABL_random := --config.student.init=random '--config.student.fields={"num_hidden_layers": 3}'
ABL_distilbert :=
# The full triple loss is results-general's gd_distilbert (its finished seeds are reused); the
# MiniLM arm and the no-general-distillation row are not needed here.
ABL_ARMS := distilbert no_ce no_cos no_mlm random
comma := ,
# One arm's general runs and their fine-tunes for the seeds $(2) ("0," is seed 0 alone).
abl_run = $(PY) scripts/seeds.py --job=general --config configs/minilm_l3.py \
	--workdir workdirs/gd_$(1) --seeds=$(2) --config.distill.preset=distilbert $(ABL_$(1)) && \
	$(PY) scripts/seeds.py --config configs/sentiment_minilm.py:baseline --seeds=$(2) \
	--workdir workdirs/gd_$(1)/sentiment --config.student.layers= \
	--config.student.path=workdirs/gd_$(1)/seed_{seed}/student_hf
# Seed by seed, every arm of a seed before the next seed: a run stopped part-way leaves whole
# seeds of the table, not whole arms. The last pass reuses every run and writes seeds.json.
results-ablation: teacher
	$(foreach s,0 1 2,$(foreach arm,$(ABL_ARMS),$(call abl_run,$(arm),$(s)$(comma)) && )) true
	$(foreach arm,$(ABL_ARMS),$(call abl_run,$(arm),0$(comma)1$(comma)2) && ) true
	$(PY) scripts/arms_table.py --metrics mlm_loss,mlm_accuracy "triple loss=workdirs/gd_distilbert" \
	  "no L_ce=workdirs/gd_no_ce" "no L_cos=workdirs/gd_no_cos" "no L_mlm=workdirs/gd_no_mlm" \
	  "random init=workdirs/gd_random"
	$(PY) scripts/arms_table.py --metrics accuracy,mcc "triple loss=workdirs/gd_distilbert/sentiment" \
	  "no L_ce=workdirs/gd_no_ce/sentiment" "no L_cos=workdirs/gd_no_cos/sentiment" \
	  "no L_mlm=workdirs/gd_no_mlm/sentiment" "random init=workdirs/gd_random/sentiment"

# AntiBERTy (8 layers) -> its layers [0, 2, 4, 6] on the IMGT germline V genes, distilled (the
# triple loss) and MLM-only from the same layers, seeds 0, 1, 2: held-out MLM loss / accuracy.
results-antiberty: assets
	$(PY) scripts/seeds.py --job=general --config configs/antiberty_l4.py \
	  --workdir workdirs/antiberty_l4 --seeds=0,1,2
	$(PY) scripts/seeds.py --job=general --config configs/antiberty_l4.py:mlm_only \
	  --workdir workdirs/antiberty_l4_mlm_only --seeds=0,1,2
	$(PY) scripts/arms_table.py --metrics mlm_loss,mlm_accuracy \
	  "MLM only=workdirs/antiberty_l4_mlm_only" "distilled=workdirs/antiberty_l4"

# Issue 15's seed 000 comparison on BBC topics (configs/bbc_minilm.py:compare): MiniLM-L6, its
# 3- and 2-layer slices, results-general's two distilled 3-layer students and a random T4-tiny,
# fine-tuned with identical hyperparameters over seeds 0, 1, 2: comparison.csv, summary.csv,
# comparison.md (paired differences from MiniLM-L6), mcc_vs_steps.png, runtime.png. About 2 h
# on the 2-core CPU after results-general (2026-12-07; README, reports/compare_bbc.md).
results-compare: results-general
	$(PY) scripts/compare_models.py --config configs/bbc_minilm.py:compare \
	  --workdir workdirs/compare_bbc

# Issue 11's seed 004 experiment: the fine-tuned MiniLM-L6 (large) and a fine-tuned 3-layer
# student (small) pruned iteratively to 30/50/70/90% (15% of what remains per round, a short
# fine-tune between rounds) and quantised to 8/6/4/3 bits, 3 seeds: sweep.json + sweep.png per
# task; the same again with the embedding tables quantised too (--embedding_bits=8: only the
# quantised points are new, sweep_emb8.*); then the teacher -> student -> heads/FFN -> vocabulary
# -> int8 pipeline table. ~1 h per task on the 2-core CPU (flaxdistil/sweep.py).
SENT_L := workdirs/sent_teacher/best_hf
SENT_S := workdirs/sent_distill/seed_0/best_hf
BBC_L := workdirs/bbc_teacher/best_hf
BBC_S := workdirs/bbc_l3_kd/best_hf
results-compress: assets
	test -f $(SENT_L)/config.json || $(PY) scripts/finetune.py --config configs/sentiment_minilm.py \
	  --workdir workdirs/sent_teacher
	test -f $(SENT_S)/config.json || $(PY) scripts/seeds.py --config configs/sentiment_minilm.py:distill \
	  --workdir workdirs/sent_distill --seeds=0, $(SENT_T)
	test -f $(BBC_L)/config.json || $(PY) scripts/finetune.py --config configs/bbc_minilm.py \
	  --workdir workdirs/bbc_teacher
	test -f $(BBC_S)/config.json || $(PY) scripts/distill_task.py --config configs/bbc_minilm.py:distill \
	  --workdir workdirs/bbc_l3_kd --config.teacher.path=$(BBC_L)
	$(PY) scripts/compress_sweep.py --config configs/sentiment_minilm.py --workdir workdirs/sweep_sent \
	  --models=large=$(SENT_L),small=$(SENT_S) --seeds=0,1,2
	$(PY) scripts/compress_sweep.py --config configs/sentiment_minilm.py --workdir workdirs/sweep_sent \
	  --models=large=$(SENT_L),small=$(SENT_S) --seeds=0,1,2 --embedding_bits=8
	$(PY) scripts/compress_sweep.py --config configs/bbc_minilm.py --workdir workdirs/sweep_bbc \
	  --models=large=$(BBC_L),small=$(BBC_S) --seeds=0,1,2
	$(PY) scripts/compress_sweep.py --config configs/bbc_minilm.py --workdir workdirs/sweep_bbc \
	  --models=large=$(BBC_L),small=$(BBC_S) --seeds=0,1,2 --embedding_bits=8
	$(PY) scripts/compress_sweep.py --mode=pipeline --config configs/sentiment_minilm.py \
	  --workdir workdirs/pipeline_sent --models=teacher=$(SENT_L),student=$(SENT_S)
	$(PY) scripts/compress_sweep.py --mode=pipeline --config configs/bbc_minilm.py \
	  --workdir workdirs/pipeline_bbc --models=teacher=$(BBC_L),student=$(BBC_S)

# Issue 10's different-tokenizers table: a 3-layer MiniLM student with its own 8,192-token
# WordPiece vocabulary against the same student keeping MiniLM's 30,522 tokens, both distilled
# (KD on logits) from the fine-tuned MiniLM teacher, 3 seeds each (same seeds, paired).
VOCAB_TEACHER ?= workdirs/sent_teacher/best_hf
results-vocab: assets
	test -f $(VOCAB_TEACHER)/config.json || \
	  $(PY) scripts/finetune.py --config configs/sentiment_minilm.py --workdir workdirs/sent_teacher
	test -f workdirs/tokenizer_wp8k/tokenizer.json || \
	  $(PY) scripts/train_tokenizer.py --out workdirs/tokenizer_wp8k --vocab_size 8192
	for arm in small_vocab_twin small_vocab; do \
	  $(PY) scripts/seeds.py --config configs/sentiment_minilm.py:$$arm --workdir workdirs/vocab_$$arm \
	    --seeds=0,1,2 --config.teacher.path=$(VOCAB_TEACHER) || exit 1; done
	$(PY) scripts/arms_table.py --metrics accuracy,mcc \
	  "MiniLM vocabulary (30,522)=workdirs/vocab_small_vocab_twin" \
	  "own WordPiece vocabulary (8,192)=workdirs/vocab_small_vocab"

# Issue 10's multi-task table: movie sentiment + BBC topics + Brown POS in one 3-layer student,
# each task distilled from its own fine-tuned teacher, against the three single-task students of
# the same job and hyperparameters (configs/multitask_minilm.py), 3 seeds; one table per task.
MT_ARMS := multi sentiment topics pos
results-multitask: assets
	test -f workdirs/sent_teacher/best_hf/config.json || $(PY) scripts/finetune.py \
	  --config configs/sentiment_minilm.py --workdir workdirs/sent_teacher
	test -f workdirs/bbc_teacher/best_hf/config.json || $(PY) scripts/finetune.py \
	  --config configs/bbc_minilm.py --workdir workdirs/bbc_teacher
	test -f workdirs/pos_teacher/best_hf/config.json || $(PY) scripts/finetune.py \
	  --config configs/brown_pos_minilm.py --workdir workdirs/pos_teacher
	for arm in $(MT_ARMS); do \
	  cfg=configs/multitask_minilm.py; test $$arm = multi || cfg=$$cfg:$$arm; \
	  $(PY) scripts/seeds.py --job multitask --config $$cfg --workdir workdirs/mt_$$arm \
	    --seeds=0,1,2 || exit 1; done
	$(PY) scripts/arms_table.py --metrics sentiment/accuracy,sentiment/mcc \
	  "single-task=workdirs/mt_sentiment" "multi-task=workdirs/mt_multi"
	$(PY) scripts/arms_table.py --metrics topics/accuracy,topics/mcc \
	  "single-task=workdirs/mt_topics" "multi-task=workdirs/mt_multi"
	$(PY) scripts/arms_table.py --metrics pos/token_accuracy,pos/token_macro_f1 \
	  "single-task=workdirs/mt_pos" "multi-task=workdirs/mt_multi"

# Issue 15's task types on real data: Brown POS tags (token classification) and the movie
# snippets' human scores (regression). Per task: the MiniLM-L6 teacher over 3 seeds, then the
# four 3-layer students of configs/common.py's STUDENT_ARMS, each seed distilled from the
# teacher of the same seed ({seed}); KD and no-KD arms share their initialisation seed by seed.
# Tables: every arm against the pretrained slice without teacher, then the teacher-slice pair.
TT_TASKS := pos:brown_pos_minilm:token_accuracy,token_macro_f1 \
	reg:movie_regression_minilm:pearson,spearman
results-tasktypes: assets
	for t in $(TT_TASKS); do \
	  name=$${t%%:*}; rest=$${t#*:}; cfg=configs/$${rest%%:*}.py; m=$${rest#*:}; \
	  $(PY) scripts/seeds.py --config $$cfg --workdir workdirs/$${name}_teacher --seeds=0,1,2 \
	    || exit 1; \
	  for arm in distill baseline_ft distill_pre baseline; do \
	    $(PY) scripts/seeds.py --config $$cfg:$$arm --workdir workdirs/$${name}_$$arm \
	      --seeds=0,1,2 --config.teacher.path=workdirs/$${name}_teacher/seed_{seed}/best_hf \
	      || exit 1; done; \
	  $(PY) scripts/arms_table.py --metrics $$m \
	    "pretrained slice, no teacher=workdirs/$${name}_baseline" \
	    "pretrained slice + KD=workdirs/$${name}_distill_pre" \
	    "teacher's slice, no teacher=workdirs/$${name}_baseline_ft" \
	    "teacher's slice + KD=workdirs/$${name}_distill" \
	    "teacher (6 layers)=workdirs/$${name}_teacher" || exit 1; \
	  $(PY) scripts/arms_table.py --metrics $$m \
	    "teacher's slice, no teacher=workdirs/$${name}_baseline_ft" \
	    "teacher's slice + KD=workdirs/$${name}_distill" || exit 1; done
