"""Training of the Earth-system prior: the loop, its configs and the tasks. Pure torch."""

from appa.training.components import EMA, CSVLog, StreamSampler
from appa.training.config import LoopConfig, OptimizerConfig, learning_rate
from appa.training.loop import Trainer, TrainingError
from appa.training.objectives import AutoencoderObjective, DiffusionObjective, Objective

__all__ = [
    "EMA",
    "AutoencoderObjective",
    "CSVLog",
    "DiffusionObjective",
    "LoopConfig",
    "Objective",
    "OptimizerConfig",
    "StreamSampler",
    "Trainer",
    "TrainingError",
    "learning_rate",
]
