"""The Steerling technical report's four interpretability measures, on the user's text.

1. **Concept detection** (labelled data only): every token of every record is read clean
   (no masking); a known concept's score at a token is its detector logit; per concept with
   at least ``min_examples`` positive and negative tokens, the AUROC of the scores against the
   token labels (:func:`~steerling_lite.evaluation.metrics.auroc`), macro-averaged.
2. **Entanglement** of the known concepts, two numbers: the mean ``|cosine|`` between the
   concept vectors ``E_k`` of distinct concepts (interference of non-orthogonal feature
   directions: Elhage et al. 2022, "Toy Models of Superposition"), and the mean ``|Pearson
   correlation|`` between distinct concepts' detector logits over the data's tokens
   (co-activation). Both over all concepts, or a seeded sample of ``max_concepts`` when the
   model has more; co-activation only over concepts whose logit varies on the data.
3. **Logit shares**: at masked positions (the ``eval`` masks), the true token's logit split
   exactly into known / discovered / epsilon
   (:func:`~steerling_lite.interpret.attribution.attribute_hidden`), each part's ``|share|``
   averaged over positions (they sum to 1).
4. **Label alignment** (needs the concept labels file): the share of labelled known
   concepts for which a word of the concept's name (letters only, at least 3 characters,
   other than ``noun``, ``verb``, ``adj``, ``adv``, ``topic``, ``category`` and English
   function words) is, case-insensitively and without surrounding spaces, one of the ``k``
   tokens the concept's unit vector promotes most through the LM head
   (:func:`~steerling_lite.model.concept_heads.lm_alignment`, as ``concept_top_tokens``).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from ..model.concept_heads import NORM_EPS, lm_alignment
from .data import LabelledText, Window
from .eval_run import SHARE_PARTS, masked_copies, masked_hidden, token_shares
from .metrics import auroc, correlation_matrix, cosine_matrix, mean_abs_offdiagonal

LABEL_STOPWORDS = frozenset("""noun verb adj adv topic category the and for with from that this into other
than some any all not its their has have are was were been being used""".split())


@dataclass
class Detection:
    """Concept detection on labelled tokens.

    Attributes:
        per_concept: known concept id -> AUROC (concepts with enough positives and negatives).
        macro_auroc: their mean (NaN when none qualified).
        tokens, records: the labelled data's size.
        min_examples: positives and negatives a concept needed.
        labelled_concepts: distinct concepts with at least one positive token.
    """

    per_concept: dict[int, float]
    macro_auroc: float
    tokens: int
    records: int
    min_examples: int
    labelled_concepts: int


@dataclass
class Report:
    """The four measures (None / a note where a figure could not be computed)."""

    detection: Detection | None
    entanglement: dict[str, Any]
    shares: dict[str, float]
    label_alignment: dict[str, Any] | None
    tokens: int
    positions: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self, catalog=None) -> dict[str, Any]:
        d = asdict(self)
        if self.detection is not None:
            label = (lambda c: catalog.label(c, "known")) if catalog is not None else str
            d["detection"]["per_concept"] = {label(c): a for c, a in self.detection.per_concept.items()}
        return d


@torch.inference_mode()
def detector_logits(lm, token_ids: list[int] | tuple[int, ...]) -> torch.Tensor:
    """Known-concept detector logits ``(T, C)`` fp32 (CPU) of every token of ``token_ids``, read clean."""
    x = torch.tensor([list(token_ids)])
    h = masked_hidden(lm, x, torch.ones_like(x, dtype=torch.bool))
    return lm.model.known_head.all_logits(h.to(lm.model.lm_head_weight.device)).float().cpu()


def concept_detection(records: list[LabelledText], logits: list[torch.Tensor], n_concepts: int,
                      min_examples: int = 5) -> Detection:
    """AUROC per concept of the detector logits ``logits`` (one ``(T, C)`` per record) against the
    records' token labels (module doc, measure 1)."""
    scores = torch.cat(logits).numpy()
    labels = np.zeros(scores.shape, dtype=bool)
    row = 0
    for rec in records:
        for t, cs in enumerate(rec.token_concepts):
            labels[row + t, list(cs)] = True
        row += len(rec.token_ids)
    n_pos = labels.sum(0)
    per = {c: auroc(scores[:, c], labels[:, c]) for c in range(n_concepts)
           if n_pos[c] >= min_examples and len(labels) - n_pos[c] >= min_examples}
    macro = float(np.mean(list(per.values()))) if per else float("nan")
    return Detection(per, macro, len(labels), len(records), min_examples, int((n_pos > 0).sum()))


@torch.inference_mode()
def entanglement(lm, logits: torch.Tensor, max_concepts: int = 4096, seed: int = 0) -> dict[str, Any]:
    """Mean ``|cos|`` of the known concept vectors and mean ``|corr|`` of their detector ``logits``
    ``(N, C)`` over the data (module doc, measure 2)."""
    head = lm.model.known_head
    n = head.n_concepts
    ids = torch.arange(n)
    if n > max_concepts:
        ids = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_concepts].sort().values
    vectors = head.embedding(ids.to(lm.model.lm_head_weight.device)).float().cpu()
    x = logits[:, ids]
    varying = x.std(0) > 0
    return {
        "mean_abs_cosine": mean_abs_offdiagonal(cosine_matrix(vectors)),
        "mean_abs_coactivation": mean_abs_offdiagonal(correlation_matrix(x[:, varying])),
        "concepts": len(ids), "concepts_varying": int(varying.sum()), "tokens": int(x.shape[0]),
    }


def logit_shares(lm, windows: list[tuple[int, ...]], kl_samples: int = 2, seed: int = 0) -> tuple[dict[str, float], int]:
    """Mean ``|share|`` of known / discovered / epsilon in the true tokens' logits at masked positions
    of ``windows`` (``kl_samples`` masked copies each, the ``eval`` masks); and the positions used."""
    total, count = torch.zeros(3), 0
    for i, ids in enumerate(windows):
        noisy, mask, targets = masked_copies(ids, kl_samples, seed + i, lm.config.mask_token_id)
        shares = token_shares(lm, masked_hidden(lm, noisy, mask), targets)
        total += shares.abs().sum(0)
        count += shares.shape[0]
    return {k: float(v) / max(count, 1) for k, v in zip(SHARE_PARTS, total)}, count


def label_words(name: str) -> set[str]:
    """The words of a concept name that label alignment looks for (module doc, measure 4)."""
    return {w for w in re.findall(r"[a-z]+", name.lower()) if len(w) >= 3 and w not in LABEL_STOPWORDS}


@torch.inference_mode()
def label_alignment(lm, catalog, k: int = 20, batch: int = 256) -> dict[str, Any] | None:
    """Share of labelled known concepts whose label word is among their top-``k`` promoted tokens
    (module doc, measure 4); None without a labels file."""
    if catalog.source is None:
        return None
    head = lm.model.known_head
    named = [(c.concept_id, label_words(c.name)) for c in catalog.concepts("known") if c.concept_id < head.n_concepts]
    named = [(c, w) for c, w in named if w]
    hits, examples = 0, []
    dev = lm.model.lm_head_weight.device
    for i in range(0, len(named), batch):
        part = named[i:i + batch]
        v = head.embedding(torch.tensor([c for c, _ in part], device=dev)).float()
        top = lm_alignment(lm.model, v / (v.norm(dim=-1, keepdim=True) + NORM_EPS)).topk(k, dim=-1).indices.cpu()
        for (cid, words), row in zip(part, top.tolist()):
            tokens = {lm.tokenizer.token_text(t).strip().lower() for t in row}
            if tokens & words:
                hits += 1
                if len(examples) < 5:
                    examples.append(catalog.label(cid, "known"))
    return {"share": hits / len(named) if named else float("nan"), "concepts": len(named), "aligned": hits,
            "k": k, "examples": examples}


def build_report(lm, catalog, *, windows: list[Window] | None = None, records: list[LabelledText] | None = None,
                 kl_samples: int = 2, seed: int = 0, min_examples: int = 5, top_tokens: int = 20) -> Report:
    """The four measures on ``records`` (labelled JSONL) or ``windows`` (plain text).

    Raises:
        ConceptError: a model without concept heads.
    """
    from ..errors import require_interpretable

    require_interpretable(lm.model, "the interpretability report")
    seqs = [r.token_ids for r in records] if records is not None else [w.token_ids for w in windows or []]
    logits = [detector_logits(lm, ids) for ids in seqs]
    notes = []
    detection = None
    if records is not None:
        detection = concept_detection(records, logits, lm.model.known_head.n_concepts, min_examples)
        if not detection.per_concept:
            notes.append(f"concept detection: no concept has {min_examples} positive and {min_examples} negative tokens")
    else:
        notes.append("concept detection skipped: the data has no labels (give JSONL with \"spans\")")
    shares, positions = logit_shares(lm, seqs, kl_samples, seed)
    alignment = label_alignment(lm, catalog, top_tokens)
    if alignment is None:
        notes.append("label alignment skipped: the model has no concept labels file")
    return Report(detection, entanglement(lm, torch.cat(logits)), shares, alignment,
                  sum(len(s) for s in seqs), positions, notes)
