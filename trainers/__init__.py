"""Corpora, the language model and its framework-free training loop (no Ray, Optuna or MLflow here)."""

from .config import (Config, DataConfig, ModelConfig, TrainConfig, apply_overrides, load_config, save_config,
                     validate)
from .corpus import Corpus, batchify, load_corpus
from .loop import TrainResult, evaluate, train
from .model import LanguageModel, build_model, count_model_flops, count_model_parameters
from .size import ModelSizes, model_sizes

__all__ = [
    "Config",
    "Corpus",
    "DataConfig",
    "LanguageModel",
    "ModelConfig",
    "ModelSizes",
    "TrainConfig",
    "TrainResult",
    "apply_overrides",
    "batchify",
    "build_model",
    "count_model_flops",
    "count_model_parameters",
    "evaluate",
    "load_config",
    "load_corpus",
    "model_sizes",
    "save_config",
    "train",
    "validate",
]
