"""PNG figures of ``eval`` and ``report`` (matplotlib, Agg backend: no display needed).

matplotlib is optional (``pip install 'steerling-lite[eval]'``); without it :func:`require_matplotlib`
raises one clear error before any work is done. Files are written atomically.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from ..atomic import write_bytes_atomic
from ..errors import InputError


def require_matplotlib(option: str = "--plot") -> Any:
    """``matplotlib.pyplot`` with the Agg backend.

    Raises:
        InputError: matplotlib is not installed (naming ``option`` and the install command).
    """
    try:
        import matplotlib
    except ImportError:
        raise InputError(f"{option} needs matplotlib, which is not installed: pip install matplotlib "
                         f"(or pip install 'steerling-lite[eval]'), or leave out {option}") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    fig.clf()
    return write_bytes_atomic(path, buf.getvalue())


def plot_eval(summary, path: str | Path) -> Path:
    """Four panels per mode: NLL per token (± standard error), KL divergence (mean, p99), top-1
    agreement and top-k known-concept overlap, steering effect relative to the reference."""
    plt = require_matplotlib()
    names = [m.mode for m in summary.modes]
    x = range(len(names))
    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    ax[0, 0].bar(x, [m.nll for m in summary.modes], yerr=[m.nll_stderr for m in summary.modes], capsize=4)
    ax[0, 0].set_title("masked-diffusion NLL (nats/token, MC ± s.e.)")
    ax[0, 1].bar([i - 0.2 for i in x], [m.kl_mean for m in summary.modes], width=0.4, label="mean")
    ax[0, 1].bar([i + 0.2 for i in x], [m.kl_p99 for m in summary.modes], width=0.4, label="p99")
    ax[0, 1].set_title(f"KL divergence from {summary.reference} (nats)")
    ax[0, 1].legend()
    ax[1, 0].bar([i - 0.2 for i in x], [m.same_top for m in summary.modes], width=0.4, label="same top-1 token")
    ax[1, 0].bar([i + 0.2 for i in x], [m.known_overlap for m in summary.modes], width=0.4,
                 label=f"top-{summary.settings.top_k} known overlap")
    ax[1, 0].set_ylim(0, 1.05)
    ax[1, 0].set_title("agreement with the reference")
    ax[1, 0].legend(loc="lower left")
    ax[1, 1].bar(x, [m.steer_ratio_mean for m in summary.modes])
    ax[1, 1].axhline(1.0, color="grey", lw=0.8)
    ax[1, 1].set_title("steering effect / reference effect (mean over concepts)")
    for a in ax.flat:
        a.set_xticks(list(x), names)
    fig.suptitle(f"{summary.windows} windows, {summary.tokens} tokens, {summary.positions} masked positions")
    fig.tight_layout()
    return _save(fig, path)


def plot_report(report, path: str | Path) -> Path:
    """Four panels: per-concept detection AUROC (histogram; a note without labels), logit shares,
    entanglement, label alignment."""
    plt = require_matplotlib()
    fig, ax = plt.subplots(2, 2, figsize=(10, 7))
    det = report.detection
    if det is not None and det.per_concept:
        ax[0, 0].hist(list(det.per_concept.values()), bins=20, range=(0, 1))
        ax[0, 0].axvline(det.macro_auroc, color="k", lw=1)
        ax[0, 0].set_title(f"concept detection AUROC (macro {det.macro_auroc:.3f}, {len(det.per_concept)} concepts)")
    else:
        ax[0, 0].text(0.5, 0.5, "no labelled data:\nconcept detection skipped", ha="center", va="center")
        ax[0, 0].set_axis_off()
    s = report.shares
    ax[0, 1].bar(list(s), list(s.values()))
    ax[0, 1].set_ylim(0, 1)
    ax[0, 1].set_title("share of the logit (mean |share|)")
    e = report.entanglement
    ax[1, 0].bar(["|cos| of concept\nvectors", "|corr| of detector\nlogits"], [e["mean_abs_cosine"], e["mean_abs_coactivation"]])
    ax[1, 0].set_title("entanglement of known concepts (lower: less)")
    la = report.label_alignment
    if la is not None:
        ax[1, 1].bar(["aligned", "not aligned"], [la["share"], 1 - la["share"]])
        ax[1, 1].set_ylim(0, 1)
        ax[1, 1].set_title(f"label word among top-{la['k']} promoted tokens ({la['concepts']} concepts)")
    else:
        ax[1, 1].text(0.5, 0.5, "no concept labels file:\nlabel alignment skipped", ha="center", va="center")
        ax[1, 1].set_axis_off()
    fig.tight_layout()
    return _save(fig, path)
