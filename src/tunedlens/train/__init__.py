"""Training tuned lenses: settings, recipes, the training function, checkpoints."""

from tunedlens.train.config import RECIPES, Resolved, TrainConfig, recipe_config
from tunedlens.train.loop import StepStats, TrainingDiverged, TrainResult, train_lens

__all__ = [
    "RECIPES",
    "Resolved",
    "StepStats",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "recipe_config",
    "train_lens",
]
