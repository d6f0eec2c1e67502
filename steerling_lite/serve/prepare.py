"""From a request body to what the generation queue runs, every check done before queueing.

Everything a client can get wrong is found here, in the request's own handler, and
answered at once with a 400 naming the field, whatever the queue holds: the prompt
(empty, too long, ids outside the vocabulary), ``max_tokens`` (see below), sampling
settings, stop strings, steering (unknown concept, NaN strength, a base model), and
attribution on a model without concept heads.

``max_tokens`` and the diffusion block. Steerling generates whole blocks of
``diff_block_size`` tokens (64 for Steerling-8B), so ``max_tokens`` is **rounded up** to a
multiple of the block for generation and the answer is **cut back to ``max_tokens``**
tokens (``finish_reason: "length"``): a client never gets more tokens than it asked for,
as the OpenAI API promises, and the response says what was generated
(``steerling.max_new_tokens``, ``steerling.rounded_up``). Refused with a 400: ``max_tokens``
below 1, above the server's ``--max-tokens-limit``, or making prompt + rounded tokens
longer than the model's context (code ``context_length_exceeded``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .. import ChatMessage, ConceptCatalog, ConceptError, GenerationConfig, GenerationError, Steering, Steerling
from ..generation.steering_builder import SCHEDULES, UNITS
from .errors import APIError, bad_request
from .schemas import AttributionOptions, ChatCompletionRequest, CompletionRequest, GenerationParams

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
MAX_STOPS = 4
DEFAULT_ATTRIBUTION_TOP = 5


@dataclass(frozen=True)
class GenerationRequest:
    """A checked generation request.

    Attributes:
        prompt_ids: the prompt's token ids (chat template applied for chat).
        config: the generation settings (``max_new_tokens`` rounded up to the block).
        max_tokens: tokens returned at most (what the client asked for).
        steering: the steered concepts (may be empty); inject_layer: None for the presets'.
        attribution_top: concepts reported per token, or None without attribution.
        stops: stop strings: the text ends before the first one.
        echo: text put before the generated text (the prompt, for ``echo``).
    """

    prompt_ids: list[int]
    config: GenerationConfig
    max_tokens: int
    steering: tuple[Steering, ...] = ()
    inject_layer: int | None = None
    attribution_top: int | None = None
    stops: tuple[str, ...] = ()
    echo: str = ""

    @property
    def rounded_up(self) -> bool:
        return self.config.max_new_tokens != self.max_tokens


class ConceptNames:
    """Known concepts by id or name, for the ``steering`` field.

    A concept is an id (``12``, ``"12"``, ``"#12"``) or a name, matched exactly but for case
    against the labels file's names (the catalog of :meth:`ConceptCatalog.for_model`).
    """

    def __init__(self, catalog: ConceptCatalog, n_known: int):
        self.catalog, self.n_known = catalog, n_known
        self._by_name: dict[str, int] = {}
        for c in catalog.concepts("known"):
            self._by_name.setdefault(c.name.strip().lower(), c.concept_id)

    def resolve(self, value: Any, where: str) -> int:
        """The known concept id ``value`` names.

        Raises:
            ConceptError: not an id or name, an id out of range, or a name no concept has.
        """
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise ConceptError(f"{where}: expected a concept id or name, got {value!r}")
        if isinstance(value, float):
            if not value.is_integer():
                raise ConceptError(f"{where}: concept id {value!r} is not an integer")
            value = int(value)
        if isinstance(value, str):
            text = value.strip()
            m = re.fullmatch(r"(?:known\s*)?#?\s*(\d+)", text, re.IGNORECASE)
            if not m:
                cid = self._by_name.get(text.lower())
                if cid is None:
                    hits = [c.label for c in self.catalog.search(text, limit=3, steerable_only=False)]
                    hint = f"; did you mean {', '.join(repr(h) for h in hits)}?" if hits else ""
                    source = "" if self._by_name else " (this model has no concept labels file: use ids)"
                    raise ConceptError(f"{where}: unknown concept {text!r}{source}{hint}")
                return cid
            value = int(m.group(1))
        if not 0 <= value < self.n_known:
            raise ConceptError(f"{where}: known concept id {value} is out of range (0..{self.n_known - 1})")
        return int(value)


def parse_steering(value: Any, names: ConceptNames | None) -> list[Steering]:
    """The ``steering`` field as :class:`Steering` specs (see :mod:`.schemas` for the formats).

    A strength without a mode picks it by sign: positive amplifies, negative suppresses with
    ``|X|``; without a strength, the mode's reference default (amplify: target 8). Units: an
    item's ``"units"`` (``reference``: logit units as ``--amplify ID=X``; ``relative``: the
    app's sliders), else ``reference`` for a list and ``relative`` for a saved session
    (``{"steering": [...]}``, what the app exports: its sliders' units). Schedule: an item's
    ``"schedule"`` (``fixed`` / ``hard_cutoff``), else the mode's reference preset for a list
    and ``fixed`` for a saved session (the app steers for as long as a slider is on).

    Raises:
        ConceptError: a malformed list, an unknown concept, a strength that is not a finite
            number, an unknown mode / units / schedule, or a model without concept heads.
    """
    if value is None:
        return []
    units, schedule = "reference", None
    if isinstance(value, dict) and "steering" in value:  # a saved session: the app's sliders
        value, units, schedule = value["steering"], "relative", "fixed"
    if not isinstance(value, list):
        raise ConceptError("steering: expected a list of {\"concept\": ID_OR_NAME, \"strength\": X} objects")
    if value and names is None:
        raise ConceptError("steering needs an interpretable checkpoint (with concept heads); this one has none")
    out = []
    for i, item in enumerate(value):
        where = f"steering[{i}]"
        if not isinstance(item, dict):
            raise ConceptError(f"{where}: expected an object like {{\"concept\": 12, \"strength\": 4}}")
        concept = item.get("concept", item.get("concept_id"))
        if concept is None:
            raise ConceptError(f"{where}: missing \"concept\" (a known concept id or name)")
        cid = names.resolve(concept, where)  # type: ignore[union-attr]
        enabled = item.get("enabled", True)
        if not isinstance(enabled, bool):
            raise ConceptError(f"{where}.enabled: expected true or false, got {enabled!r}")
        strength = _finite(item.get("strength"), f"{where}.strength")
        mode = item.get("mode")
        if mode is None:  # by the strength's sign
            mode = "suppress" if strength is not None and strength < 0 else "amplify"
            strength = None if strength is None else abs(strength)
        elif mode not in ("amplify", "suppress", "intervene"):
            raise ConceptError(f"{where}.mode: {mode!r}; expected amplify, suppress or intervene")
        out.append(Steering(cid, mode, strength, enabled, units=_choice(item, "units", UNITS, units, where),
                            schedule=_choice(item, "schedule", SCHEDULES, schedule, where)))
    return out


def _choice(item: dict[str, Any], key: str, options: tuple[str, ...], default: str | None, where: str) -> str | None:
    value = item.get(key, default)
    if value is not None and value not in options:
        raise ConceptError(f"{where}.{key}: {value!r}; expected {' or '.join(options)}")
    return value


def _finite(value: Any, where: str) -> float | None:
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError, OverflowError):  # OverflowError: an integer beyond a float, 1e400 written out
        raise ConceptError(f"{where} is {value!r}; expected a finite number") from None
    if isinstance(value, bool) or not math.isfinite(v):
        raise ConceptError(f"{where} is {value!r}; expected a finite number")
    return v


def _attribution_top(value: bool | AttributionOptions | None, lm: Steerling) -> int | None:
    if value is None or value is False:
        return None
    if not lm.config.interpretable:
        raise APIError(400, "attribution needs an interpretable checkpoint (with concept heads); this one has none",
                       "attribution")
    return DEFAULT_ATTRIBUTION_TOP if value is True else value.top


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise APIError(400, f"stop: at most {MAX_STOPS} stop strings, got {len(stops)}", "stop")
    if any(s == "" for s in stops):
        raise APIError(400, "stop: stop strings must not be empty", "stop")
    return tuple(stops)


def _unsupported(params: GenerationParams) -> None:
    if params.n != 1:
        raise APIError(400, f"n is {params.n}: this server returns one choice per request (n=1)", "n")
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(params, name):
            raise APIError(400, f"{name} is not supported; use repetition_penalty (>= 1)", name)
    if getattr(params, "logprobs", None) or getattr(params, "best_of", None) not in (None, 1):
        raise APIError(400, "logprobs and best_of are not supported; ask for attribution instead", "logprobs")
    if getattr(params, "suffix", None) or getattr(params, "tools", None):
        raise APIError(400, "suffix and tools are not supported", "suffix" if getattr(params, "suffix", None) else "tools")


def prepare(lm: Steerling, names: ConceptNames | None, params: GenerationParams, prompt_ids: list[int], *,
            max_tokens: int | None, default_max_tokens: int, max_tokens_limit: int | None,
            builder=None, echo: str = "") -> GenerationRequest:
    """Check a generation request and build its :class:`GenerationRequest`.

    Raises:
        APIError: 400 naming the field at fault (see the module docstring).
    """
    _unsupported(params)
    cfg = lm.config
    block, context = cfg.diff_block_size, cfg.block_size
    if not prompt_ids:
        raise APIError(400, "the prompt is empty: give at least one token of text", "prompt")
    bad = [i for i in prompt_ids if not 0 <= i < cfg.vocab_size]
    if bad:
        raise APIError(400, f"prompt token id {bad[0]} is outside the vocabulary (0..{cfg.vocab_size - 1})", "prompt")
    want = default_max_tokens if max_tokens is None else max_tokens
    if want < 1:
        raise APIError(400, f"max_tokens is {want}; expected at least 1", "max_tokens")
    if max_tokens_limit is not None and want > max_tokens_limit:
        raise APIError(400, f"max_tokens is {want}; this server allows at most {max_tokens_limit}", "max_tokens")
    rounded = math.ceil(want / block) * block
    if len(prompt_ids) + rounded > context:
        shown = f"{want}" + (f" (rounded up to {rounded}, a multiple of the diffusion block {block})" if rounded != want else "")
        raise APIError(400, f"this model's maximum context length is {context} tokens; the prompt has {len(prompt_ids)} "
                            f"and max_tokens {shown} make {len(prompt_ids) + rounded}: shorten the prompt or lower "
                            "max_tokens", "max_tokens", "context_length_exceeded")
    temperature = params.temperature
    config = GenerationConfig(
        max_new_tokens=rounded, steps=params.steps,
        temperature=1.2 if temperature is None else temperature, entropy_sampling=temperature is None,
        top_p=0.8 if params.top_p is None else params.top_p,
        repetition_penalty=1.1 if params.repetition_penalty is None else params.repetition_penalty,
        seed=params.seed, confidence_threshold=params.parallel_threshold,
    )
    try:
        config.validate(block)
    except GenerationError as exc:
        raise bad_request(exc, _field_of(str(exc))) from None
    try:
        steering = parse_steering(params.steering, names)
        if builder is not None and steering:
            builder.validate(steering)
    except ConceptError as exc:
        raise bad_request(exc, "steering") from None
    n_layers = cfg.n_layers
    if params.inject_layer is not None and not 0 <= params.inject_layer <= n_layers:
        raise APIError(400, f"inject_layer is {params.inject_layer}; expected 0..{n_layers} (the model's layers)",
                       "inject_layer")
    return GenerationRequest(
        prompt_ids=list(prompt_ids), config=config, max_tokens=want, steering=tuple(steering),
        inject_layer=params.inject_layer, attribution_top=_attribution_top(params.attribution, lm),
        stops=_stops(params.stop), echo=echo,
    )


_FIELDS = {"steps": "steps", "temperature": "temperature", "top_p": "top_p", "repetition_penalty": "repetition_penalty",
           "confidence_threshold": "parallel_threshold", "max_new_tokens": "max_tokens", "seed": "seed"}


def _field_of(message: str) -> str | None:
    first = message.split(" ", 1)[0]
    return _FIELDS.get(first)


def completion_prompt(lm: Steerling, req: CompletionRequest) -> tuple[list[int], str]:
    """Token ids and text of a completion's prompt (encoded as it is, no chat template).

    Raises:
        APIError: several prompts, or an empty list.
    """
    prompt = req.prompt
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str):
        if len(prompt) != 1:
            raise APIError(400, f"prompt: one prompt per request, got {len(prompt)}", "prompt")
        prompt = prompt[0]
    if isinstance(prompt, str):
        return lm.tokenizer.encode(prompt), prompt
    ids = [int(i) for i in prompt]
    return ids, lm.tokenizer.decode(ids) if ids else ""


def chat_prompt(lm: Steerling, req: ChatCompletionRequest, model_name: str) -> list[int]:
    """Token ids of a chat in the instruct chat template.

    Raises:
        APIError: a base model (no chat template) or an unknown role.
    """
    if not lm.config.instruct:
        raise APIError(400, f"{model_name} is a base model without a chat template: use /v1/completions", "messages")
    msgs: list[ChatMessage] = []
    for i, m in enumerate(req.messages):
        role = ROLES.get(m.role)
        if role is None:
            raise APIError(400, f"messages[{i}].role: {m.role!r}; expected system, user or assistant", "messages")
        msgs.append(ChatMessage(role, m.text()))
    return lm.tokenizer.chat_prompt(msgs)


def embedding_inputs(lm: Steerling, value: str | Sequence[Any]) -> list[list[int]]:
    """Token ids of each input of an embeddings request.

    Raises:
        APIError: an empty input, one longer than the context, or ids outside the vocabulary.
    """
    items: list[Any] = [value] if isinstance(value, str) else list(value)
    if items and all(isinstance(i, int) for i in items):
        items = [items]
    if not items:
        raise APIError(400, "input is empty", "input")
    out = []
    cfg = lm.config
    for i, item in enumerate(items):
        ids = lm.tokenizer.encode(item) if isinstance(item, str) else [int(t) for t in item]
        if not ids:
            raise APIError(400, f"input[{i}] is empty", "input")
        if len(ids) > cfg.block_size:
            raise APIError(400, f"input[{i}] is {len(ids)} tokens; this model's context is {cfg.block_size}",
                           "input", "context_length_exceeded")
        if any(not 0 <= t < cfg.vocab_size for t in ids):
            raise APIError(400, f"input[{i}]: token ids must be in 0..{cfg.vocab_size - 1}", "input")
        out.append(ids)
    return out
