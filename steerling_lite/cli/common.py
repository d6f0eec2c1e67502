"""Options and helpers shared by the subcommands that load a model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..runtime import Steerling


def add_model_args(p: argparse.ArgumentParser) -> None:
    """``--model --device --dtype``: where the checkpoint is and where / how it runs."""
    p.add_argument("--model", metavar="DIR", help="checkpoint directory (default: the embedded default model)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available, else CPU), cpu, cuda, cuda:N")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="weight precision; auto: bf16 on CUDA, fp32 on CPU when it fits in RAM, else bf16")


def model_dir(args: argparse.Namespace) -> Path:
    """The ``--model`` directory, or the embedded default (written on first use)."""
    if args.model:
        return Path(args.model)
    from ..default_model import ensure_default_model

    return ensure_default_model()


def fmt_bytes(n: float) -> str:
    """``1536`` -> ``1.5 KiB`` (binary units, as memory tools print them)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def load_model(args: argparse.Namespace, quiet: bool = False) -> Steerling:
    """Load ``--model`` with a progress bar on stderr and a one-line summary after."""
    path = model_dir(args)
    bar = None
    progress = None
    if not quiet and sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(total=0, unit="B", unit_scale=True, unit_divisor=1024, desc="loading", file=sys.stderr, leave=False)

        def progress(done: int, total: int, name: str) -> None:
            bar.total = total
            bar.update(done - bar.n)
    try:
        lm = Steerling.load(path, device=args.device, dtype=args.dtype, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    if not quiet:
        st = lm.load_stats
        dtype = str(lm.dtype).removeprefix("torch.")
        print(
            f"loaded {path} in {st.seconds:.2f} s: {fmt_bytes(st.file_bytes)} of weights, {dtype} on {lm.device}, "
            f"process RSS {fmt_bytes(st.rss_bytes)}",
            file=sys.stderr,
        )
    return lm
