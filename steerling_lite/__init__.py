"""steerling-lite: a local runtime for Steerling, the interpretable causal diffusion language model."""

from .config import ConceptConfig, SteerlingConfig, load_config
from .errors import CheckpointError, ConfigError, GenerationError, SteerlingError
from .generate import Generation, GenerationConfig, GenerationResult, StepEvent
from .runtime import Steerling
from .steering import SteeringPlan
from .tokenizer import ChatMessage, SteerlingTokenizer

__version__ = "0.1.0"

__all__ = [
    "Steerling", "GenerationConfig", "GenerationResult", "Generation", "StepEvent",
    "SteeringPlan", "SteerlingConfig", "ConceptConfig", "load_config", "ChatMessage",
    "SteerlingTokenizer", "SteerlingError", "ConfigError", "CheckpointError", "GenerationError",
]
