"""Steering strength scale (issue 12): what a strength does to the default model's text.

For a few known concepts and a range of strengths, generate from a few prompts with fixed
seeds and measure, on the generated tokens:

- the concept's detector probability: ``sigmoid`` of the known-concept head's logit for the
  concept, averaged over the generated positions of a clean (unsteered, unmasked) forward pass
  of the final text: does the text now read as being about the concept;
- the share of English words: alphabetic words of the decoded text that are words of the
  default model's own training corpus (WordNet 3.0 glosses, shipped with it), by count: is it
  still text.

Strengths in relative units (the app's sliders, ``Steering(units="relative")``, fixed
schedule) and, for comparison, in the reference's logit units (``--amplify ID=TARGET``) with
the fixed schedule, so that neither is cut off. Prints a Markdown table; ``--write`` puts it
in BENCHMARKS.md between the ``steering-scale`` markers.

    python scripts/bench_steering_scale.py                 # minutes on 2 CPU cores
    python scripts/bench_steering_scale.py --write
"""

from __future__ import annotations

import argparse
import lzma
import re
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, replace_section  # noqa: E402

from steerling_lite import (  # noqa: E402
    ConceptCatalog, GenerationConfig, Steering, SteeringBuilder, Steerling, default_model_dir,
)

START, END = "<!-- steering-scale:start -->", "<!-- steering-scale:end -->"
CONCEPTS = ("noun.animal", "noun.food", "noun.plant", "noun.location")
PROMPTS = ("The history of the city", "She opened the door and", "In the morning the farmer", "A small book about")
SEEDS = (1, 2, 3)
RELATIVE = (0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 6.0, 10.0)
REFERENCE = (1.0, 8.0)
WORD = re.compile(r"[a-z]+")


def word_set(model_dir: Path) -> set[str]:
    """Lower-case words of the default model's training corpus (WordNet glosses)."""
    with lzma.open(model_dir / "training-corpus.txt.xz", "rt", encoding="utf-8") as f:
        return set(WORD.findall(f.read().lower()))


@torch.inference_mode()
def measure(lm: Steerling, builder: SteeringBuilder, concept: int, steering: Steering | None, words: set[str],
            n_tokens: int) -> tuple[float, float, str]:
    """Mean detector probability, English-word share and the first sample text of ``steering``
    over the prompts and seeds."""
    probs, shares, sample = [], [], ""
    for prompt in PROMPTS:
        for seed in SEEDS:
            plan = builder.build([steering]) if steering is not None else None
            config = GenerationConfig(max_new_tokens=n_tokens, steps=n_tokens // 4, seed=seed)
            res = lm.generate(prompt, config, plan, chat=False)
            ids = torch.tensor([res.prompt_ids + res.token_ids], device=lm.model.input_device)
            hidden = lm.model.transformer(ids)[0, len(res.prompt_ids):]
            if len(res.token_ids):
                p = torch.sigmoid(lm.model.known_head.all_logits(hidden)[:, concept]).mean()
                probs.append(float(p))
            found = WORD.findall(res.text.lower())
            shares.append(sum(w in words for w in found) / len(found) if found else 0.0)
            sample = sample or res.text
    return sum(probs) / max(len(probs), 1), sum(shares) / len(shares), sample


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per run (default 64)")
    ap.add_argument("--write", action="store_true", help="rewrite the section of BENCHMARKS.md")
    args = ap.parse_args(argv)
    model_dir = default_model_dir()
    lm = Steerling.load(model_dir, device="cpu")
    catalog = ConceptCatalog.for_model(lm)
    builder = SteeringBuilder(lm)
    words = word_set(model_dir)
    layer = builder.default_inject_layer([Steering(0)])
    unit = builder.relative_unit(layer)
    t0 = time.perf_counter()
    rows = [
        "| concept | strength | units | alpha per block | detector p | English words | sample (first 60 characters) |",
        "|---|---:|---|---:|---:|---:|---|",
    ]
    for label in CONCEPTS:
        cid = next(c.concept_id for c in catalog.concepts("known") if c.label == label)
        peak = builder.direction((cid,))[1]
        cases = [(s, "relative", Steering(cid, "amplify", s, schedule="fixed", units="relative") if s else None)
                 for s in RELATIVE]
        cases += [(t, "reference", Steering(cid, "amplify", t, schedule="fixed")) for t in REFERENCE]
        for strength, units, steering in cases:
            p, share, sample = measure(lm, builder, cid, steering, words, args.tokens)
            alpha = strength * unit if units == "relative" else strength / peak
            text = sample[:60].replace("|", "\\|").replace("\n", " ")
            rows.append(f"| {label} | {strength:g} | {units} | {alpha:.2f} | {p:.3f} | {share:.0%} | `{text}` |")
            print(rows[-1], flush=True)
    elapsed = time.perf_counter() - t0
    body = "\n".join([
        "## Steering strength scale (issue 12)",
        "",
        f"`python scripts/bench_steering_scale.py --write` on {machine()}, no GPU; the default model "
        f"(`steerling_lite/assets/default-model`, {lm.config.n_layers} layers, d={lm.config.n_embd}), "
        f"{args.tokens} tokens (4 a denoising step) from {len(PROMPTS)} prompts x {len(SEEDS)} seed(s) per row, "
        f"entropy-adaptive sampling, amplify with the fixed schedule injected from layer {layer}. Residual-stream length "
        f"‖h‖ = {builder.residual_norm():.1f}, so one relative unit is alpha {unit:.3f} at each of the "
        f"{lm.config.n_layers - max(layer - 1, 0)} blocks it is added after; "
        f"{elapsed / 60:.1f} minutes in all.",
        "",
        "*detector p*: the known-concept head's probability for the concept, averaged over the "
        "generated tokens of a clean forward pass of the final text; *English words*: share of the "
        "text's words that are in the default model's training corpus (WordNet glosses).",
        "",
        *rows,
    ])
    print()
    print(body)
    if args.write:
        bench = Path(__file__).resolve().parent.parent / "BENCHMARKS.md"
        bench.write_text(replace_section(bench.read_text(encoding="utf-8"), START, END, body), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
