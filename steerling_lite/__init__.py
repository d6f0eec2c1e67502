"""steerling-lite: a local runtime for Steerling, the interpretable causal diffusion language model."""

from .loading.config import ConceptConfig, SteerlingConfig, load_config
from .errors import (
    CheckpointError, ConceptError, ConfigError, GenerationError, PlacementError, RetrievalError, SteerlingError,
)
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
from .interpret.concepts import Concept, ConceptCatalog
from .interpret.concept_tokens import ConceptScore, TokenScore, concept_top_tokens, concepts_for_token
from .interpret.embeddings import embed, embed_all
from .interpret.index_build import BuildReport, add_to_index, build_index
from .interpret.retrieval import Neighbour, SharedConcept, SpanNeighbours, TrainingIndex, retrieve
from .interpret.input_attribution import InputAttribution, InputScore, input_attribution
from .interpret.occlusion import OcclusionAttribution, OcclusionCost, occlusion, span_positions
from .interpret.prompt_units import GRANULARITIES, PromptUnit, prompt_units
from .generation.steering import InjectionTerm, amplify, suppress
from .generation.steering_builder import Steering, SteeringBuilder, build_steering
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

# loading: plan, then load; sizes; the user's data (issue 10)
from quant import fmt_bytes, parse_size
from .atomic import write_text_atomic
from .loading.default_model import data_dir, default_model_dir
from .loading.hub import resolve_model_dir
from .loading.plan import LoadPlan, plan_memory
from .loading.quantized import QUANT_MODES

__all__ += [
    "LoadPlan", "plan_memory", "QUANT_MODES", "fmt_bytes", "parse_size", "data_dir", "default_model_dir",
    "resolve_model_dir", "write_text_atomic",
]

# one home for prompt building (issue 10)
from .generation.prompt import build_prompt  # noqa: E402

__all__ += ["build_prompt"]

__all__ += [  # training-data retrieval (issue 11)
    "TrainingIndex", "retrieve", "build_index", "add_to_index", "BuildReport", "SpanNeighbours", "Neighbour",
    "SharedConcept", "RetrievalError",
]

# discovered concepts a person can read (issue 11)
from .interpret.discovered import ActivatingChunk, DiscoveredConcepts, DiscoveredDescription  # noqa: E402

__all__ += ["DiscoveredConcepts", "DiscoveredDescription", "ActivatingChunk"]

__all__ += [  # occlusion input attribution (issue 11)
    "occlusion", "OcclusionAttribution", "OcclusionCost", "span_positions", "PromptUnit", "prompt_units", "GRANULARITIES",
]

# what the app needs besides the above (issue 10)
from .errors import require_interpretable, run_guarded  # noqa: E402
from .generation.steering import AMPLIFY_TARGET  # noqa: E402

__all__ += ["require_interpretable", "AMPLIFY_TARGET", "run_guarded"]

# the audit loop: a span's three axes, the concept to suppress (issue 11)
from .interpret.audit import (  # noqa: E402
    DEFAULT_INPUT_METHOD, INPUT_METHODS, SpanAudit, audit_span, span_concepts, span_inputs, span_neighbours,
    suppression, top_known,
)
from .interpret.index_build import ensure_default_index, is_default_model  # noqa: E402

__all__ += [
    "SpanAudit", "audit_span", "span_concepts", "span_inputs", "span_neighbours", "suppression", "top_known",
    "INPUT_METHODS", "DEFAULT_INPUT_METHOD", "ensure_default_index", "is_default_model",
]

# steering strengths relative to the model, schedules by name, presets (issue 12)
from .generation.steering_builder import RELATIVE_UNIT, residual_norm  # noqa: E402
from .generation.steering_preset import (  # noqa: E402
    SteeringPreset, check_preset_name, list_presets, load_preset, preset_dir, preset_path, save_preset,
)

__all__ += [
    "RELATIVE_UNIT", "residual_norm", "SteeringPreset", "check_preset_name", "list_presets", "load_preset",
    "preset_dir", "preset_path", "save_preset",
]
