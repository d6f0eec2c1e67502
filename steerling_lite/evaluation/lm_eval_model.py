"""The lm-evaluation-harness model type ``steerling-lite`` (needs ``pip install steerling-lite[eval]``).

    python -m steerling_lite.evaluation --model steerling-lite \
        --model_args pretrained=DIR,quant=nf4,device=cuda --tasks hellaswag

``python -m steerling_lite.evaluation`` is lm-eval's command line (``lm_eval``, the same
arguments) with this module imported: lm-eval (0.4.13) resolves ``--model`` only against the
models it ships and has no plugin hook for others, so the class registers itself
(``@register_model``) when imported. In Python, import this module and pass
``model="steerling-lite"`` to ``lm_eval.simple_evaluate``, or pass a :class:`SteerlingLiteLM`.

What each request type computes (the reference's ``steerling==0.2.0``
``evaluation/lm_harness_wrapper.py``, except where noted):

- ``loglikelihood``: the Monte Carlo masked-diffusion estimate
  (:func:`~steerling_lite.evaluation.likelihood.mc_loglikelihood`, ``mc_num`` samples in forward
  batches of ``mc_batch_size``, classifier-free guidance ``cfg``), the context / continuation split
  moving the context's trailing spaces into the continuation and typographic quotes, dashes
  and ellipses normalized to ASCII before encoding. ``is_greedy`` is always False (the reference
  does not compute it). A pair longer than the context is windowed (the reference scores -inf).
- ``loglikelihood_rolling``: the same estimate of the whole text with an empty context, windowed
  when longer than the context (the reference keeps the last ``max_length`` tokens only).
- ``generate_until``: masked-diffusion generation of ``max_gen_toks`` rounded up to a multiple
  of the diffusion block, one denoising step per token (or ``steps``), single-token stop strings
  and EOS as stop tokens, the text cut before the first stop string. Sampling: greedy when the
  task asks for it (``do_sample: false`` or ``temperature: 0``), ``temperature`` sampling when it
  gives one, else the reference's entropy-adaptive temperature (the reference always uses the
  latter); seeded with ``seed``.

Steering (to benchmark a steering preset), in ``model_args``: ``amplify=ID[:TARGET]``,
``suppress=ID[:ALPHA]``, ``intervene=ID:WEIGHT`` (several separated by ``;``),
``inject_layer=N``, or ``steering=FILE.toml``, a preset file::

    inject_layer = 8                 # optional
    [[steering]]                     # one table per concept: the fields of Steering
    concept_id = 1234
    mode = "amplify"                 # amplify | suppress | intervene
    strength = 8.0                   # optional: the mode's default

Likelihoods are then computed as in the first denoising step of a steered generation
(:func:`~steerling_lite.evaluation.likelihood.masked_logprobs`), generations steered as
``steerling-lite generate`` steers.
"""

from __future__ import annotations

import sys
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch
try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
    from lm_eval.utils import simple_parse_args_string
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("the lm-eval model type needs lm-evaluation-harness: pip install 'steerling-lite[eval]'") from exc
from tqdm import tqdm

from ..errors import InputError
from ..generation.generate import GenerationConfig
from ..generation.steering import Steering, SteeringBuilder, SteeringPlan
from ..loading.hub import resolve_model_dir
from ..runtime import Steerling
from .likelihood import DEFAULT_GROUP, DEFAULT_SAMPLES, mc_loglikelihood

MODEL_NAME = "steerling-lite"
_ASCII = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                        "\u2014": "-", "\u2026": "..."})


def _specs(text: Any, mode: str, need_value: bool = False) -> list[Steering]:
    """``ID[:VALUE];ID[:VALUE]`` of a model_args steering key as :class:`Steering` specs."""
    out = []
    for item in str(text).split(";"):
        if not item.strip():
            continue
        cid, sep, value = item.strip().partition(":")
        try:
            strength = float(value) if sep else None
            concept = int(cid)
        except ValueError:
            raise InputError(f"model_args {mode}={text!r}: expected ID[:STRENGTH] items separated by ';'") from None
        if need_value and strength is None:
            raise InputError(f"model_args {mode}={text!r}: expected ID:WEIGHT")
        if mode == "suppress" and strength is not None:
            strength = abs(strength)
        out.append(Steering(concept, mode, strength))  # type: ignore[arg-type]
    return out


def read_steering_preset(path: str | Path) -> tuple[list[Steering], int | None]:
    """The ``[[steering]]`` specs and the optional ``inject_layer`` of a TOML preset file.

    Raises:
        InputError: an unreadable file, bad TOML, or a table with unknown or missing keys.
    """
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InputError(f"steering preset {path}: {exc}") from None
    allowed = {f.name for f in fields(Steering)}
    specs = []
    for i, table in enumerate(data.get("steering", [])):
        unknown = set(table) - allowed if isinstance(table, dict) else {"(not a table)"}
        if unknown or "concept_id" not in table:
            raise InputError(f"steering preset {path}: [[steering]] #{i + 1} needs concept_id and may have "
                             f"{', '.join(sorted(allowed))}; got {', '.join(sorted(unknown)) or 'no concept_id'}")
        if "group" in table:
            table = {**table, "group": tuple(table["group"])}
        specs.append(Steering(**table))
    layer = data.get("inject_layer")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int)):
        raise InputError(f"steering preset {path}: inject_layer must be an integer, got {layer!r}")
    return specs, layer


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of ``text`` with typographic quotes, dashes and ellipses as ASCII (the reference's
    ``tok_encode``)."""
    return tokenizer.encode(text.translate(_ASCII))


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids of a loglikelihood request: the context's trailing whitespace
    moves to the continuation, whose ids are those of the whole text after the context's (the
    reference's ``_encode_pair``)."""
    stripped = context.rstrip()
    continuation = context[len(stripped):] + continuation
    whole = encode_text(tokenizer, stripped + continuation)
    ctx = encode_text(tokenizer, stripped)
    return ctx, whole[len(ctx):]


@register_model(MODEL_NAME)
class SteerlingLiteLM(LM):
    """lm-evaluation-harness model over :class:`~steerling_lite.Steerling` (module docstring).

    Args (``--model_args``):
        pretrained: checkpoint directory or pulled model name (default: the embedded default model).
        device, dtype, quant, max_gpu_memory, max_cpu_memory, offload_dir: as ``Steerling.load``.
        mc_num: Monte Carlo samples per likelihood (default 128, the reference's).
        mc_batch_size: samples per forward batch and stratification group (default 32).
        cfg: classifier-free guidance scale for likelihoods and generation (default 0).
        seed: seed of the masks (per request) and of generation sampling.
        max_length: context in tokens (default the model's ``block_size``).
        max_gen_toks: default generation length when a task gives none (default 256).
        steps: denoising steps per generation (default one per token).
        steering, amplify, suppress, intervene, inject_layer: steering (module docstring).
        batch_size, max_batch_size: accepted and ignored (lm-eval passes them; batching is over
            Monte Carlo samples, ``mc_batch_size``).

    Raises:
        InputError, ConfigError, CheckpointError, PlacementError: bad arguments or checkpoint.
    """

    def __init__(self, pretrained: str | None = None, device: str = "auto", dtype: str = "auto", quant: str = "auto",
                 max_gpu_memory: str | None = None, max_cpu_memory: str | None = None, offload_dir: str | None = None,
                 mc_num: int = DEFAULT_SAMPLES, mc_batch_size: int = DEFAULT_GROUP, cfg: float = 0.0, seed: int = 0,
                 max_length: int | None = None, max_gen_toks: int = 256, steps: int | None = None,
                 steering: str | None = None, amplify: Any = None, suppress: Any = None, intervene: Any = None,
                 inject_layer: int | None = None, batch_size: Any = None, max_batch_size: Any = None, **unknown: Any):
        super().__init__()
        if unknown:
            raise InputError(f"unknown model_args for {MODEL_NAME}: {', '.join(sorted(unknown))}")
        for name, value in (("mc_num", mc_num), ("mc_batch_size", mc_batch_size), ("max_gen_toks", max_gen_toks)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InputError(f"model_args {name} must be a positive integer, got {value!r}")
        self.lm = Steerling.load(resolve_model_dir(pretrained), device=device or "auto", dtype=dtype, quant=quant,
                                 max_gpu_memory=max_gpu_memory, max_cpu_memory=max_cpu_memory,
                                 offload_dir=offload_dir)
        self.mc_num, self.mc_batch_size, self.cfg, self.seed = mc_num, mc_batch_size, float(cfg), int(seed)
        self._max_length = min(int(max_length or self.lm.config.block_size), self.lm.config.block_size)
        self._max_gen_toks, self.steps = max_gen_toks, steps
        self.plan = self._steering(steering, amplify, suppress, intervene, inject_layer)

    def _steering(self, preset, amplify, suppress, intervene, inject_layer) -> SteeringPlan | None:
        specs, layer = read_steering_preset(preset) if preset else ([], None)
        if amplify is not None:
            specs += _specs(amplify, "amplify")
        if suppress is not None:
            specs += _specs(suppress, "suppress")
        if intervene is not None:
            specs += _specs(intervene, "intervene", need_value=True)
        layer = inject_layer if inject_layer is not None else layer
        if not specs:
            return None
        return SteeringBuilder(self.lm).build(specs, layer)

    @classmethod
    def create_from_arg_obj(cls, arg_dict: dict[str, Any], additional_config: dict[str, Any] | None = None):
        """An instance from ``model_args`` and lm-eval's own options (``batch_size``, ``device``...):
        ``model_args`` win; lm-eval's ``device`` (``cuda:0`` unless ``--device`` is given) is used
        when ``model_args`` has none, as ``auto`` when CUDA is not available."""
        args = dict(arg_dict)
        extra = {k: v for k, v in (additional_config or {}).items() if v is not None}
        device = extra.pop("device", None)
        if device is not None and "device" not in args:
            args["device"] = device if not str(device).startswith("cuda") or torch.cuda.is_available() else "auto"
        return cls(**{**extra, **args})

    @classmethod
    def create_from_arg_string(cls, arg_string: str, additional_config: dict[str, Any] | None = None):
        """:meth:`create_from_arg_obj` of ``key=value,key=value`` (lm-eval's ``--model_args``)."""
        return cls.create_from_arg_obj(simple_parse_args_string(arg_string), additional_config)

    # ---- what lm-eval reads --------------------------------------------------------------
    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def eot_token_id(self) -> int:
        return self.lm.config.eos_token_id

    @property
    def device(self) -> str:
        return str(self.lm.device)

    def tok_encode(self, text: str) -> list[int]:
        return encode_text(self.lm.tokenizer, text)

    def tok_decode(self, ids: list[int]) -> str:
        return self.lm.tokenizer.decode(ids)

    def encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        return encode_pair(self.lm.tokenizer, context, continuation)

    # ---- request types -------------------------------------------------------------------
    def _loglikelihood(self, context_ids: list[int], continuation_ids: list[int]) -> float:
        return mc_loglikelihood(self.lm, context_ids, continuation_ids, n_samples=self.mc_num, seed=self.seed,
                                batch_size=self.mc_batch_size, cfg_scale=self.cfg, steering=self.plan).logprob

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """``(log p(continuation | context), False)`` per request (Monte Carlo, nats)."""
        out = []
        for req in tqdm(requests, desc="loglikelihood", disable=disable_tqdm):
            context, continuation = req.args
            ctx, cont = self.encode_pair(context or "", continuation)
            out.append((self._loglikelihood(ctx, cont), False))
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """``log p(text)`` per request with an empty context (Monte Carlo, nats, windowed)."""
        return [self._loglikelihood([], self.tok_encode(req.args[0]))
                for req in tqdm(requests, desc="loglikelihood_rolling", disable=disable_tqdm)]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Generated text per request, cut before the first stop string (module docstring)."""
        out = []
        block = self.lm.config.diff_block_size
        for req in tqdm(requests, desc="generate_until", disable=disable_tqdm):
            context, kwargs = req.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            n = int(kwargs.get("max_gen_toks", self._max_gen_toks))
            n = min(max(block, -(-n // block) * block), (self._max_length - 1) // block * block)
            ctx = self.tok_encode(context or "")[-max(1, self._max_length - n):] or [self.lm.config.eos_token_id]
            stops = {ids[0] for ids in map(self.tok_encode, until) if len(ids) == 1} | {self.lm.config.eos_token_id}
            temperature = kwargs.get("temperature")
            if kwargs.get("do_sample") is False or temperature == 0:
                temperature = 0.0
            config = GenerationConfig.from_settings(
                temperature=None if temperature is None else float(temperature), max_new_tokens=n,
                steps=self.steps, cfg_scale=self.cfg, seed=self.seed, stop_tokens=tuple(sorted(stops)),
            )
            text = self.lm.generate(ctx, config, self.plan).text
            cuts = [i for i in (text.find(s) for s in until if s) if i >= 0]
            out.append(text[:min(cuts)] if cuts else text)
        return out


def main(argv: list[str] | None = None) -> None:
    """lm-eval's command line with the ``steerling-lite`` model registered (this module imported);
    ``python -m steerling_lite.evaluation`` runs it."""
    from lm_eval.__main__ import cli_evaluate

    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()
