"""Training of the Earth-system prior: the loop, its settings and the objectives it trains.
Pure torch."""

from appa.training.components import EMA, CSVLog, StreamSampler
from appa.training.config import LoopConfig, OptimizerConfig, learning_rate
from appa.training.loop import Trainer, TrainingError
from appa.training.objectives import (
    AutoencoderLossConfig,
    AutoencoderObjective,
    DiffusionObjective,
    DiffusionObjectiveConfig,
    Objective,
)

__all__ = [
    "EMA",
    "AutoencoderLossConfig",
    "AutoencoderObjective",
    "CSVLog",
    "DiffusionObjective",
    "DiffusionObjectiveConfig",
    "LoopConfig",
    "Objective",
    "OptimizerConfig",
    "StreamSampler",
    "Trainer",
    "TrainingError",
    "learning_rate",
]
