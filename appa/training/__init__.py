"""Training of the Earth-system prior: the loop, its configs and the tasks. Pure torch."""

from appa.training.components import EMA, CSVLog, StreamSampler, derive_seed
from appa.training.config import LoopConfig, OptimizerConfig, learning_rate
from appa.training.loop import Trainer, TrainingError
from appa.training.tasks import AutoencoderTask, DiffusionTask, Task

__all__ = [
    "EMA",
    "AutoencoderTask",
    "CSVLog",
    "DiffusionTask",
    "LoopConfig",
    "OptimizerConfig",
    "StreamSampler",
    "Task",
    "Trainer",
    "TrainingError",
    "derive_seed",
    "learning_rate",
]
