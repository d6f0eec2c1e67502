"""Quality and interpretability of quantized modes against the full-precision reference, on the same text.

For every window of text (:mod:`steerling_lite.evaluation.data`) and every mode (``none``,
``int8``, ``nf4``, ``fp4``: the same checkpoint loaded with ``Steerling.load(..., quant=mode)``):

- **likelihood**: the masked-diffusion Monte Carlo estimate of ``log p(window)``
  (:func:`~steerling_lite.evaluation.likelihood.mc_loglikelihood`, the reference's lm-eval
  estimator, ``n_samples`` masks), reported per token in nats with its standard error; every
  mode draws the same masks (the same seed per window);
- at the masked positions of ``kl_samples`` masked copies of the window (the same masks for
  every mode), comparing the mode with the reference:

  - **KL divergence** ``KL(P_ref || P_mode)`` of the LM's predictive distributions, mean and
    99th percentile over positions, and **same top**: the share of positions whose argmax
    agrees (llama.cpp ``llama-perplexity --kl-divergence``: mean KLD, p99 KLD, "same top p");
  - **top-k known-concept overlap**: ``|top_k(known logits_mode) ∩ top_k(known logits_ref)| / k``
    (k = 32 by default), averaged over positions;
  - **logit shares**: the true token's logit split into known / discovered / epsilon
    (:func:`~steerling_lite.interpret.attribution.attribute_hidden`, exact), each part's
    ``|share|`` averaged over positions, and its change from the reference;
  - **steering effect**: for each of a fixed set of known concepts, the concept's detector
    probability ``sigmoid(known logit)`` at the masked positions after amplifying it
    (:class:`~steerling_lite.generation.steering.SteeringBuilder`, the amplify preset injected
    at the masked positions, :func:`~steerling_lite.generation.step.denoise_step`) minus before;
    reported as ``effect_mode / effect_ref`` per concept.

Every mode's model is kept loaded for the whole run (the reference's predictions are compared
with each mode's position by position), so the memory needed is the sum of the modes'.

A run is resumable: each finished window's numbers are appended as one JSON line to a state
file (header line: the settings and the windows), and ``resume=True`` skips the windows already
there (a last line cut short by a kill is dropped).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import write_text_atomic
from ..errors import InputError
from ..generation.steering import AMPLIFY_TARGET, SteeringPlan
from ..generation.steering_builder import Steering, SteeringBuilder
from ..generation.step import StepSteering, compute_dtype, denoise_step
from ..interpret.attribution import attribute_hidden
from .likelihood import mc_loglikelihood, sample_masks
from .data import Window
from .metrics import kl_divergence, percentile, ratio, topk_overlap

SHARE_PARTS = ("known", "discovered", "epsilon")
ROW_CHUNK = 256  # masked positions whose full-vocabulary distributions are held at once


@dataclass(frozen=True)
class EvalSettings:
    """What a run measures and how (recorded in the state file; a resumed run must match).

    Attributes:
        n_samples: Monte Carlo masks per window for the likelihood (the reference: 128).
        kl_samples: masked copies per window for KL / concepts / steering (their masks are the
            first ``kl_samples`` of the likelihood's sampler for another seed).
        seed: base seed; window ``i`` uses ``seed + i``.
        batch_size: masked copies per forward pass.
        top_k: known concepts compared per position (32).
        steer_concepts: known concept ids steered (empty: no steering measure).
        steer_target: amplify target in logit units (the preset's 8).
        inject_layer: steering's inject layer (None: the preset's default for the model).
    """

    n_samples: int = 16
    kl_samples: int = 2
    seed: int = 0
    batch_size: int = 8
    top_k: int = 32
    steer_concepts: tuple[int, ...] = ()
    steer_target: float = AMPLIFY_TARGET
    inject_layer: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steer_concepts"] = list(self.steer_concepts)
        return d


# ---------------------------------------------------------------------------------------
# one window


@torch.inference_mode()
def masked_hidden(lm, noisy: torch.Tensor, mask: torch.Tensor, steering: SteeringPlan | None = None) -> torch.Tensor:
    """Final hidden states ``(P, D)`` (model dtype, on the CPU) at the masked positions ``mask``
    ``(B, T)`` bool of the masked windows ``noisy`` ``(B, T)`` long, row-major order; with
    ``steering`` the plan's injection is added at the masked positions as in a denoising step
    that has committed nothing yet."""
    model = lm.model
    x = noisy.to(model.input_device)
    step = StepSteering.at(steering, 0, x.shape[1], compute_dtype(model))
    out = denoise_step(model, x, torch.arange(x.shape[1], device=x.device), steering=step)
    return out.hidden[mask.to(out.hidden.device)].cpu()


def masked_copies(ids: list[int] | tuple[int, ...], n: int, seed: int, mask_id: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` masked copies of the window ``ids`` (``T`` tokens) with the likelihood's mask sampler
    (:func:`~steerling_lite.evaluation.likelihood.sample_masks`) for seed ``seed + 1000003`` (so
    they are not the likelihood's own masks of the same seed).

    Returns:
        ``(noisy, mask, targets)``: ``(n, T)`` long ids with the mask id at masked positions,
        ``(n, T)`` bool mask, ``(P,)`` long the true tokens at the masked positions (row-major).
    """
    mask = sample_masks(len(ids), n, group_size=n, seed=seed + 1_000_003).mask
    x = torch.tensor(list(ids)).expand(n, -1)
    return torch.where(mask, torch.tensor(mask_id), x), mask, x[mask]


@dataclass
class _Positions:
    """What one mode computed at the masked positions of one window (CPU)."""

    hidden: torch.Tensor  # (P, D)
    known_logits: torch.Tensor  # (P, C) fp32


@torch.inference_mode()
def _positions(lm, noisy, mask) -> _Positions:
    h = masked_hidden(lm, noisy, mask)
    return _Positions(h, lm.model.known_head.all_logits(h.to(lm.model.lm_head_weight.device)).float().cpu())


@torch.inference_mode()
def _lm_logprobs(lm, hidden: torch.Tensor) -> torch.Tensor:
    model = lm.model
    return torch.log_softmax(model.lm_logits(hidden.to(model.lm_head_weight.device)).float(), dim=-1).cpu()


@torch.inference_mode()
def token_shares(lm, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(P, 3)`` fp32 signed known / discovered / epsilon shares of the logits of tokens ``targets``
    ``(P,)`` read from final hidden states ``hidden`` ``(P, D)`` (exact split:
    :func:`~steerling_lite.interpret.attribution.attribute_hidden`; ``|shares|`` sum to 1 per row)."""
    dev = lm.model.lm_head_weight.device
    return attribute_hidden(lm.model, hidden.to(dev), targets.to(dev)).shares().cpu()


@torch.inference_mode()
def _steer_effects(lm, noisy, mask, base: _Positions, plans: list[tuple[int, SteeringPlan]]) -> list[float]:
    """Per steered concept: Σ over masked positions of ``p_after - p_before`` of its detector."""
    out = []
    for cid, plan in plans:
        h = masked_hidden(lm, noisy, mask, plan).to(lm.model.lm_head_weight.device)
        after = torch.sigmoid(lm.model.known_head.all_logits(h)[:, cid].float()).cpu()
        out.append(float((after - torch.sigmoid(base.known_logits[:, cid])).sum()))
    return out


def steering_plans(lm, settings: EvalSettings) -> list[tuple[int, SteeringPlan]]:
    """One amplify plan per steered concept (raises ConceptError for a bad id)."""
    builder = SteeringBuilder(lm)
    return [(c, builder.build([Steering(c, "amplify", settings.steer_target)], settings.inject_layer))
            for c in settings.steer_concepts]


def window_record(lms: dict[str, Any], reference: str, window: Window, number: int, settings: EvalSettings,
                  plans: dict[str, list[tuple[int, SteeringPlan]]]) -> dict[str, Any]:
    """Every mode's numbers for one window (a JSON-able dict; see :func:`summarize` for the fields)."""
    ids = list(window.token_ids)
    seed = settings.seed + number
    noisy, mask, targets = masked_copies(ids, settings.kl_samples, seed, lms[reference].config.mask_token_id)
    ref_lm = lms[reference]
    ref = _positions(ref_lm, noisy, mask)
    modes: dict[str, Any] = {}
    for mode, lm in lms.items():
        est = mc_loglikelihood(lm, [], ids, n_samples=settings.n_samples, seed=seed, batch_size=settings.batch_size)
        pos = ref if mode == reference else _positions(lm, noisy, mask)
        kl, same = [], 0
        for i in range(0, len(targets), ROW_CHUNK):
            lp_ref = _lm_logprobs(ref_lm, ref.hidden[i:i + ROW_CHUNK])
            lp = lp_ref if mode == reference else _lm_logprobs(lm, pos.hidden[i:i + ROW_CHUNK])
            kl.extend(kl_divergence(lp_ref, lp).clamp_min(0.0).tolist())
            same += int((lp_ref.argmax(-1) == lp.argmax(-1)).sum())
        shares = token_shares(lm, pos.hidden, targets)
        modes[mode] = {
            "logprob": est.logprob, "stderr": est.stderr, "n_tokens": est.n_tokens, "positions": len(kl),
            "kl": [float(f"{v:.6g}") for v in kl], "same_top": same,
            "overlap": float(topk_overlap(ref.known_logits, pos.known_logits, settings.top_k).sum()),
            "abs_shares": shares.abs().sum(0).tolist(),
            "steer": _steer_effects(lm, noisy, mask, pos, plans[mode]),
        }
    return {"window": window.key, "tokens": len(ids), "modes": modes}


# ---------------------------------------------------------------------------------------
# the run: state file, resume


def _header(model: str, modes: list[str], reference: str, windows: list[Window], settings: EvalSettings) -> dict:
    return {"state": "steerling-lite eval", "model": model, "modes": modes, "reference": reference,
            "windows": [w.key for w in windows], "settings": settings.to_dict()}


def read_state(path: Path, header: dict) -> list[dict[str, Any]]:
    """The window records of a state file written for ``header`` (a cut-short last line is dropped
    and cut off the file).

    Raises:
        InputError: the file is not a state file, or was written for another model, modes, data
            or settings.
    """
    try:
        lines = path.read_bytes().split(b"\n")
    except OSError as exc:
        raise InputError(f"--state {path}: {exc.strerror or exc}") from None
    records, good = [], 0
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if i >= len(lines) - 2:  # the last line, cut short by a kill
                break
            raise InputError(f"--state {path}: line {i + 1} is not JSON; remove the file to start over") from None
        if i == 0:
            if rec != header:
                raise InputError(f"--state {path}: written by a run with other settings, model, modes or data; "
                                 f"run without --resume to start over, or use another --state file")
        else:
            records.append(rec)
        good = sum(len(b) + 1 for b in lines[: i + 1])
    if good == 0:
        raise InputError(f"--state {path}: not a state file of `steerling-lite eval`; run without --resume")
    with open(path, "r+b") as f:  # drop a partial last line before appending
        f.truncate(min(good, os.fstat(f.fileno()).st_size))
    return records


def _append(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def run_eval(lms: dict[str, Any], windows: list[Window], settings: EvalSettings, *, reference: str = "none",
             state: str | Path | None = None, resume: bool = False, model_name: str = "",
             progress: Callable[[Iterable], Iterable] | None = None) -> EvalSummary:
    """Evaluate every mode of ``lms`` (mode -> loaded :class:`~steerling_lite.Steerling`) on ``windows``.

    Args:
        lms: the loaded modes; ``reference`` must be one of them.
        windows: the text, cut into windows (:func:`~steerling_lite.evaluation.data.text_windows`).
        settings: :class:`EvalSettings`.
        state: JSONL state file (default: none, nothing is saved between windows).
        resume: continue the run in ``state``, skipping its finished windows.
        model_name: recorded in the state header.
        progress: wraps the iterable of windows still to do (a tqdm bar).

    Raises:
        InputError: no windows, the reference missing, a state file of another run.
        ConceptError: a steered concept id out of range, or a model without concept heads.
    """
    if reference not in lms:
        raise InputError(f"the reference mode {reference!r} is not among the modes evaluated ({', '.join(lms)})")
    if not windows:
        raise InputError("--data: no text to evaluate")
    plans = {mode: steering_plans(lm, settings) for mode, lm in lms.items()}
    header = _header(model_name, list(lms), reference, windows, settings)
    done: list[dict[str, Any]] = []
    path = Path(state) if state is not None else None
    if path is not None and resume and path.exists():
        done = read_state(path, header)
    elif path is not None:
        write_text_atomic(path, json.dumps(header) + "\n")
    finished = {r["window"] for r in done}
    todo = [(i, w) for i, w in enumerate(windows) if w.key not in finished]
    for i, w in (progress(todo) if progress is not None else todo):
        rec = window_record(lms, reference, w, i, settings, plans)
        done.append(rec)
        if path is not None:
            _append(path, rec)
    return summarize(done, list(lms), reference, settings)


# ---------------------------------------------------------------------------------------
# summary


@dataclass
class ModeSummary:
    """One mode's figures over all windows.

    Attributes:
        mode: ``none``, ``int8``, ``nf4``, ``fp4``.
        nll, nll_stderr: negative log-likelihood per token, nats, and its Monte Carlo standard error.
        ppl: ``exp(nll)``.
        kl_mean, kl_p99: KL divergence from the reference at the masked positions, nats.
        same_top: share of positions whose top-1 token agrees with the reference's.
        known_overlap: mean top-k known-concept overlap with the reference.
        shares: mean ``|share|`` of the true token's logit through known / discovered / epsilon.
        shares_delta: ``shares - reference shares``.
        steer_effect: per steered concept id, mean detector-probability change at the masked positions.
        steer_ratio: per concept, ``effect / reference effect``.
    """

    mode: str
    nll: float
    nll_stderr: float
    ppl: float
    kl_mean: float
    kl_p99: float
    same_top: float
    known_overlap: float
    shares: dict[str, float]
    shares_delta: dict[str, float] = field(default_factory=dict)
    steer_effect: dict[str, float] = field(default_factory=dict)
    steer_ratio: dict[str, float] = field(default_factory=dict)

    @property
    def steer_ratio_mean(self) -> float:
        v = [r for r in self.steer_ratio.values() if np.isfinite(r)]
        return float(np.mean(v)) if v else float("nan")

    @property
    def steer_max_deviation(self) -> float:
        """``max |ratio - 1|`` over the steered concepts (NaN without any)."""
        v = [abs(r - 1) for r in self.steer_ratio.values() if np.isfinite(r)]
        return float(max(v)) if v else float("nan")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["steer_ratio_mean"], d["steer_max_deviation"] = self.steer_ratio_mean, self.steer_max_deviation
        return d


@dataclass
class EvalSummary:
    """The run's result: per mode a :class:`ModeSummary`, with the reference, windows, tokens and settings."""

    modes: list[ModeSummary]
    reference: str
    windows: int
    tokens: int
    positions: int
    settings: EvalSettings

    def mode(self, name: str) -> ModeSummary:
        return next(m for m in self.modes if m.mode == name)

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "windows": self.windows, "tokens": self.tokens,
                "positions": self.positions, "settings": self.settings.to_dict(),
                "modes": {m.mode: m.to_dict() for m in self.modes}}


def summarize(records: list[dict[str, Any]], modes: list[str], reference: str, settings: EvalSettings) -> EvalSummary:
    """Pool the window records: likelihood sums over windows (variances add), KL percentiles over
    every position, means weighted by positions."""
    out = []
    ref_effect = _pooled(records, reference)["effect"]
    ref_shares = _pooled(records, reference)["shares"]
    for mode in modes:
        p = _pooled(records, mode)
        n_tok, n_pos = max(p["n_tokens"], 1), max(p["positions"], 1)
        nll = -p["logprob"] / n_tok
        ids = [str(c) for c in settings.steer_concepts]
        out.append(ModeSummary(
            mode, nll, float(np.sqrt(p["var"])) / n_tok, float(np.exp(nll)),
            float(np.mean(p["kl"])) if p["kl"] else float("nan"), percentile(p["kl"], 99),
            p["same_top"] / n_pos, p["overlap"] / n_pos,
            dict(zip(SHARE_PARTS, p["shares"])),
            {k: a - b for k, a, b in zip(SHARE_PARTS, p["shares"], ref_shares)},
            dict(zip(ids, p["effect"])), {c: ratio(a, b) for c, a, b in zip(ids, p["effect"], ref_effect)},
        ))
    return EvalSummary(out, reference, len(records), sum(r["tokens"] for r in records),
                       _pooled(records, reference)["positions"], settings)


def _pooled(records: list[dict[str, Any]], mode: str) -> dict[str, Any]:
    rs = [r["modes"][mode] for r in records]
    positions = sum(r["positions"] for r in rs)
    n_steer = len(rs[0]["steer"]) if rs else 0
    return {
        "logprob": sum(r["logprob"] for r in rs), "var": sum(r["stderr"] ** 2 for r in rs if np.isfinite(r["stderr"])),
        "n_tokens": sum(r["n_tokens"] for r in rs), "positions": positions,
        "kl": [v for r in rs for v in r["kl"]], "same_top": sum(r["same_top"] for r in rs),
        "overlap": sum(r["overlap"] for r in rs),
        "shares": [sum(r["abs_shares"][k] for r in rs) / max(positions, 1) for k in range(3)],
        "effect": [sum(r["steer"][k] for r in rs) / max(positions, 1) for k in range(n_steer)],
    }
