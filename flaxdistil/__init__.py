"""flaxdistil: distil and compress BERT-like transformers in JAX/Flax."""

from flaxdistil.hf import CheckpointError, Pretrained, load_pretrained, save_pretrained
from flaxdistil.models import Model, ModelConfig, inference_fn
from flaxdistil.pipeline import pipeline
from flaxdistil.student import (
    PRESETS,
    count_params,
    derive_student,
    format_param_table,
    init_student,
    param_table,
    student_config,
)

__all__ = [
    "CheckpointError",
    "Model",
    "ModelConfig",
    "PRESETS",
    "Pretrained",
    "count_params",
    "derive_student",
    "format_param_table",
    "inference_fn",
    "init_student",
    "load_pretrained",
    "param_table",
    "pipeline",
    "save_pretrained",
    "student_config",
]
