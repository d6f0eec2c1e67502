"""steerling-lite: a local runtime for Steerling, the interpretable causal diffusion language model."""

from .loading.config import ConceptConfig, SteerlingConfig, load_config
from .errors import CheckpointError, ConceptError, ConfigError, GenerationError, PlacementError, SteerlingError
from .generation.generate import Generation, GenerationConfig, GenerationResult, StepEvent
from .runtime import Steerling
from .generation.steering import SteeringPlan
from .loading.tokenizer import ChatMessage, SteerlingTokenizer

# attribution, steering, concepts, embeddings (issue 4)
from .interpret.attribution import (
    AttributionRecorder, ConceptAttribution, ConceptContribution, ExplainedStep, ExplainedStream,
    TokenAttribution, VerificationResult, explain, explain_stream,
)
from .interpret.chunks import ChunkAttribution, ChunkConcept, find_chunks
from .interpret.concepts import Concept, ConceptCatalog, ConceptScore, TokenScore, concept_top_tokens, concepts_for_token
from .interpret.embeddings import embed, embed_all
from .interpret.input_attribution import InputAttribution, InputScore, input_attribution
from .generation.steering import InjectionTerm, Steering, SteeringBuilder, amplify, build_steering, suppress
from .generation.trace import GenerationTrace, StepTrace

__version__ = "0.1.0"

__all__ = [
    "Steerling", "GenerationConfig", "GenerationResult", "Generation", "StepEvent",
    "SteeringPlan", "SteerlingConfig", "ConceptConfig", "load_config", "ChatMessage",
    "SteerlingTokenizer", "SteerlingError", "ConfigError", "CheckpointError", "GenerationError", "PlacementError",
]
__all__ += [
    "explain", "explain_stream", "ExplainedStream", "ExplainedStep", "AttributionRecorder", "ConceptAttribution",
    "TokenAttribution", "ConceptContribution", "VerificationResult", "ChunkAttribution", "ChunkConcept",
    "find_chunks", "input_attribution", "InputAttribution", "InputScore", "GenerationTrace", "StepTrace",
    "Concept", "ConceptCatalog", "ConceptError", "ConceptScore", "TokenScore", "concept_top_tokens",
    "concepts_for_token", "embed", "embed_all", "Steering", "SteeringBuilder", "build_steering", "amplify",
    "suppress", "InjectionTerm",
]

# what the app (tui) needs, issue 10; sizes and model dirs are the loading stage's
from .atomic import write_text_atomic
from .errors import require_interpretable
from .generation.steering import AMPLIFY_TARGET
from .loading.default_model import data_dir, default_model_dir, resolve_model_dir
from .loading.quantized import QUANT_MODES, LoadPlan, plan_memory
from .loading.sizes import fmt_bytes, parse_size  # issue-10 placeholder (the loading helper's sizes)

__all__ += [
    "write_text_atomic", "require_interpretable", "AMPLIFY_TARGET", "data_dir", "default_model_dir",
    "resolve_model_dir", "QUANT_MODES", "LoadPlan", "plan_memory", "fmt_bytes", "parse_size",
]
