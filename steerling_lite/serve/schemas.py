"""Request bodies of the OpenAI API as the server reads them, plus Steerling's extra fields.

The OpenAI fields keep their meaning (https://platform.openai.com/docs/api-reference);
fields the server does not know are ignored (as the OpenAI client may send more than
it uses). Steerling's extras ride in the same body, as llama-server and vLLM take their
own (the ``openai`` client's ``extra_body``):

- ``steering``: a list of ``{"concept": ID_OR_NAME, "strength": X}`` (X > 0 amplifies with
  target X in logit units, X < 0 suppresses with alpha |X|; optional ``"mode"`` ``amplify`` /
  ``suppress`` / ``intervene``, ``"enabled"``, ``"units"`` ``reference`` / ``relative`` (the
  app's sliders) and ``"schedule"`` ``fixed`` / ``hard_cutoff``), items also as the app
  saves them (``{"concept_id", "label", "strength", "enabled"}``), or a saved session
  ``{"steering": [...]}``, read as the app means it: relative units, fixed schedule;
- ``inject_layer``: the layer steering injects from (default: the presets');
- ``attribution``: ``true`` (top 5 concepts) or ``{"top": N}``: per-token concepts and
  known / discovered / epsilon shares in each chunk (or the response);
- ``steps``: denoising steps in all (a multiple of the generated blocks);
- ``parallel_threshold``: Fast-dLLM parallel decoding threshold in (0, 1];
- ``repetition_penalty``: >= 1 (default 1.1, the reference's);
- embeddings: ``kind`` (``composed``, ``hidden``, ``known``, ``discovered``) and ``pooling``
  (``mean``, ``last``, ``first``, ``none``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Body):
    include_usage: bool = False


class AttributionOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    top: int = Field(5, ge=1, le=64, description="concepts reported per token (both heads together)")


class GenerationParams(_Body):
    """Fields shared by completions and chat completions."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = 1
    frequency_penalty: float | None = None
    presence_penalty: float | None = None
    user: str | None = None
    # Steerling's extras
    steering: Any = None
    inject_layer: int | None = None
    attribution: bool | AttributionOptions | None = None
    steps: int | None = None
    parallel_threshold: float | None = None
    repetition_penalty: float | None = None


class CompletionRequest(GenerationParams):
    """``POST /v1/completions``: one prompt (a string, a list of one string, or token ids)."""

    prompt: str | list[str] | list[int]
    echo: bool = False
    logprobs: int | None = None
    best_of: int | None = None
    suffix: str | None = None


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: str
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(GenerationParams):
    """``POST /v1/chat/completions``: instruct models, in their chat template."""

    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None


class EmbeddingRequest(_Body):
    """``POST /v1/embeddings``."""

    model: str | None = None
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None
    kind: str = "composed"
    pooling: str = "mean"
