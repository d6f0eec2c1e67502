"""Options and helpers shared by the subcommands that load a model."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from quant import QuantConfig, fmt_bytes, parse_size
from quant.config import FLOAT_DTYPES

from ..loading.checkpoint import Progress
from ..loading.hub import resolve_model_dir
from ..loading.quantized import QUANT_MODES, quant_config
from ..runtime import Steerling
from ..textfile import read_text
from .argtypes import device_arg, directory_arg, float_arg


def size_arg(text: str) -> int:
    """argparse type for ``6GiB`` / ``8GB`` / bytes (:func:`quant.parse_size`)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model --device --dtype`` (where the checkpoint is and where / how it runs) and the
    memory options ``--quant --max-gpu-memory --max-cpu-memory --offload-dir`` with the
    quantization settings."""
    p.add_argument("--model", metavar="DIR", help="checkpoint directory (default: the embedded default model)")
    p.add_argument("--device", default="auto", type=device_arg, help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", *FLOAT_DTYPES],
                   help="precision of the unquantized weights; auto: bf16 on CUDA or when quantizing, "
                        "fp32 on CPU when it fits in RAM, else bf16")
    g = p.add_argument_group("memory (see `steerling-lite plan`)")
    g.add_argument("--quant", default="auto", choices=QUANT_MODES,
                   help="quantize the transformer blocks' linear layers (bitsandbytes); embeddings, norms, LM head "
                        "and concept heads stay unquantized. auto (default): the best of bf16, int8, nf4 that runs "
                        "without offloading, else the one that offloads least")
    g.add_argument("--max-gpu-memory", type=size_arg, metavar="SIZE",
                   help="GPU memory to use at most, e.g. 6GiB (default: what is free); the rest is offloaded")
    g.add_argument("--max-cpu-memory", type=size_arg, metavar="SIZE",
                   help="RAM to use at most, e.g. 16GiB (default: what is available minus 1 GiB)")
    g.add_argument("--offload-dir", metavar="DIR", type=directory_arg,
                   help="directory for disk offload of layers that fit neither on the GPU nor in RAM")
    add_quant_settings(g)


def add_quant_settings(g) -> None:
    """``--int8-threshold --double-quant --compute-dtype``: the settings of a quantization method."""
    g.add_argument("--int8-threshold", type=float_arg(0.0), default=6.0, metavar="T",
                   help="int8: LLM.int8() outlier threshold (0 disables the fp16 outlier path; default 6)")
    g.add_argument("--double-quant", action=argparse.BooleanOptionalAction, default=True,
                   help="nf4/fp4: quantize the absmax statistics too (default on; saves ~0.37 bit per weight)")
    g.add_argument("--compute-dtype", default="bf16", choices=list(FLOAT_DTYPES),
                   help="nf4/fp4: matmul dtype (default bf16)")


def quant_arg(args: argparse.Namespace) -> str | QuantConfig | None:
    """``--quant`` with its settings: the mode string (``auto``/``none``) or a :class:`quant.QuantConfig`."""
    mode = getattr(args, "quant", "auto")
    if mode in ("auto", "none"):
        return mode
    return quant_config(mode, int8_threshold=args.int8_threshold, double_quant=args.double_quant,
                        compute_dtype=FLOAT_DTYPES[args.compute_dtype])


@contextmanager
def byte_progress(desc: str, enabled: bool = True, unit: str = "B") -> Iterator[Progress | None]:
    """A tqdm bar in bytes (or in ``unit``, counted) on stderr (only when stderr is a terminal),
    as a loader ``progress`` callback ``(bytes_done, bytes_total, tensor_name)``; None when disabled."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from tqdm import tqdm

    scale = {"unit_scale": True, "unit_divisor": 1024} if unit == "B" else {}
    bar = tqdm(total=0, unit=unit, desc=desc, file=sys.stderr, leave=False, **scale)

    def progress(done: int, total: int, name: str) -> None:
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        bar.close()


def model_dir(args: argparse.Namespace) -> Path:
    """The ``--model`` directory (or pulled model name), or the embedded default (:func:`resolve_model_dir`)."""
    return resolve_model_dir(args.model)


def load_model(args: argparse.Namespace, quiet: bool = False) -> Steerling:
    """Load ``--model`` with a progress bar on stderr and a one-line summary after."""
    path = model_dir(args)
    with byte_progress("loading", enabled=not quiet) as progress:
        lm = Steerling.load(path, device=args.device, dtype=args.dtype, progress=progress, quant=quant_arg(args),
                            max_gpu_memory=getattr(args, "max_gpu_memory", None),
                            max_cpu_memory=getattr(args, "max_cpu_memory", None),
                            offload_dir=getattr(args, "offload_dir", None))
    if not quiet:
        st = lm.load_stats
        dtype = str(lm.dtype).removeprefix("torch.")
        where = f"{dtype} on {lm.device}"
        if lm.quant != "none":
            where = f"{lm.quant} (rest {dtype}) on {lm.device}"
        if lm.plan is not None:
            where += f", {lm.plan.plan.split()}"
        print(
            f"loaded {path} in {st.seconds:.2f} s: {fmt_bytes(st.file_bytes)} of weights, {where}, "
            f"process RSS {fmt_bytes(st.rss_bytes)}",
            file=sys.stderr,
        )
    return lm


def read_text_file(path: str, option: str, max_bytes: int = 64 * 2**20) -> str:
    """The UTF-8 text of ``path`` (given as ``option``), at most ``max_bytes`` (default 64 MiB).

    Raises:
        InputError: the file is missing, a directory, unreadable, too large or not UTF-8
            (:func:`~steerling_lite.textfile.read_text`).
    """
    return read_text(path, f"{option} {path}", max_bytes, "a prompt-sized text file")
