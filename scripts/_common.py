"""Helpers shared by the scripts: the machine line benchmarks print, a fixed English prompt,
and marked sections of Markdown files (model card, benchmarks) that scripts rewrite."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

ENGLISH = (
    "The river wound through the valley, past the mill and the old stone bridge, where children "
    "gathered in summer to watch the boats drift by. In the evenings the town grew quiet, and the "
    "lamps along the quay were lit one by one as the fishermen came home with their nets. "
)


def prompt_ids(tokenizer, n_tokens: int) -> list[int]:
    """The first ``n_tokens`` token ids of :data:`ENGLISH` repeated."""
    return tokenizer.encode(ENGLISH * (n_tokens // 20 + 1))[:n_tokens]


def machine() -> str:
    """``CPU model, N cores, torch version (threads), load average`` of this machine."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{cpu}, {os.cpu_count()} cores{gpu}, torch {torch.__version__} ({torch.get_num_threads()} threads){load}"


def replace_section(text: str, start: str, end: str, body: str) -> str:
    """Replace what lies between the ``start`` / ``end`` markers (append the block if absent)."""
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        head, rest = text.split(start, 1)
        _, tail = rest.split(end, 1)
        return head + block + tail
    return text.rstrip() + "\n\n" + block + "\n"
