"""Flax modules for BERT-like encoders: config, encoder, heads."""

from flaxdistil.models.config import FAMILIES, FAMILY_HEADS, HEADS, ModelConfig
from flaxdistil.models.encoder import Encoder, Layer, unstack_layers
from flaxdistil.models.heads import Model, build, inference_fn, init_params, uses_pooler

__all__ = [
    "FAMILIES",
    "FAMILY_HEADS",
    "HEADS",
    "ModelConfig",
    "Encoder",
    "Layer",
    "Model",
    "build",
    "inference_fn",
    "init_params",
    "uses_pooler",
    "unstack_layers",
]
