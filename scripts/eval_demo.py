#!/usr/bin/env python3
"""Evaluate a trained Steerling model (the shipped default by default) and write the figures into
its model card and BENCHMARKS.md.

Measures, on the held-out WordNet entries that ``scripts/prepare_data.py`` set aside:

1. **Masked-token loss and accuracy** at fixed mask ratios (every position eligible, windows
   of ``--window`` tokens of the held-out stream), full 100281-token softmax as the runtime
   computes it, against a **unigram baseline** (train-set token frequencies, add-0.01
   smoothing over the full vocabulary; accuracy: always the most frequent token) on the
   same masked tokens.
2. **Known-concept detection**: each held-out entry alone, clean; score of a concept = the
   known head's logit averaged over the entry's tokens; AUROC (Mann-Whitney) per concept
   with at least 5 positive and 5 negative entries, macro-averaged (also by kind:
   lexicographer file, topic, category), plus the lexicographer-file top-1 accuracy.
3. **Logit mass through known concepts**: at masked held-out positions (t = 0.5), the
   target token's logit split as the reference's attribution splits it (§7 of the
   format note): per-concept contributions ``w_c E[c]·W_lm[y]`` of the top-k known and
   discovered concepts and ``epsilon·W_lm[y]``; share = Σ|known| / (Σ|known| + Σ|disc| +
   |eps|), averaged over positions; with the identity check known + discovered + epsilon
   == logit.
4. **Steering success**: for several known concepts, generations from neutral prompts at
   the same seeds, unsteered and steered (``steerling_lite.generation.steering.amplify``, target in
   logit units, injection from ``inject_layer`` of the config). A pair is a success when
   the steered text scores higher than the unsteered one (a) by the model's own reading:
   the concept's detector probability averaged over the generated tokens, re-read clean
   (no steering), and (b) by WordNet: the share of generated content words with a sense
   labelled with the concept.

Usage::

    python scripts/eval_demo.py                         # default model; prints JSON
    python scripts/eval_demo.py --update-card --update-benchmarks
    python scripts/eval_demo.py --quick                 # fewer windows / seeds (a smoke run)
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, replace_section  # noqa: E402
from prepare_data import DEFAULT_WORDNET_DIR, Lexicon, load_exceptions, load_wordnet  # noqa: E402

from steerling_lite import GenerationConfig, Steerling  # noqa: E402
from steerling_lite.model.concept_heads import decompose  # noqa: E402
from steerling_lite.generation.steering import amplify  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = REPO / "steerling_lite" / "assets" / "default-model"
EVAL_START, EVAL_END = "<!-- eval:start -->", "<!-- eval:end -->"
BENCH_START, BENCH_END = "<!-- issue6:start -->", "<!-- issue6:end -->"
STEER_CONCEPTS = [
    "noun.food", "noun.animal", "noun.plant", "noun.body", "verb.motion", "category: bird",
    "category: color", "category: musical instrument", "topic: medicine", "category: bony fish",
]
PROMPTS = ["A", "The", "Something that is", "Any of"]
STOPWORDS = set("""a an the and or but of in on at to for from by with without as is are was were be been being
this that these those it its his her their our your my we you they he she them him us which who whom whose what
when where how why not no nor so than then there here into onto over under about above below between among
also very more most less least such same other another any each every some all both either neither one two
can could may might must shall should will would do does did done has have had having used use uses etc""".split())


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------
def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve by the Mann-Whitney U statistic (ties get average ranks).

    Args:
        scores: ``(n,)`` float; labels: ``(n,)`` 0/1 with both classes present.
    """
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    s = scores[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and s[j + 1] == s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    pos = labels.astype(bool)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def concept_kind(name: str) -> str:
    return "topic" if name.startswith("topic:") else "category" if name.startswith("category:") else "lexicographer file"


@dataclass
class Data:
    heldout: np.ndarray  # full-vocabulary ids
    train_counts: np.ndarray  # (V,) token counts of the train stream
    entries: list[dict]
    labels_by_key: dict[str, list[int]]


def load_data(data_dir: Path) -> Data:
    """The prepared WordNet data (``scripts/prepare_data.py``).

    Raises:
        FileNotFoundError: a missing file.
    """
    for n in ("heldout_tokens.npy", "train_tokens.npy", "entries.jsonl"):
        if not (data_dir / n).is_file():
            raise FileNotFoundError(f"{data_dir / n}: missing; run scripts/prepare_data.py --out {data_dir}")
    heldout = np.load(data_dir / "heldout_tokens.npy", allow_pickle=False).astype(np.int64)
    train = np.load(data_dir / "train_tokens.npy", allow_pickle=False).astype(np.int64)
    entries = [json.loads(line) for line in open(data_dir / "entries.jsonl", encoding="utf-8")]
    return Data(heldout, np.bincount(train, minlength=100281), entries, {e["key"]: e["labels"] for e in entries})


# ---------------------------------------------------------------------------------------
# 1. masked-token loss
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def masked_lm(lm: Steerling, data: Data, window: int, n_windows: int, ratios: list[float], seed: int = 0) -> dict:
    """Held-out masked-token CE (nats) and accuracy at each mask ratio, model vs unigram."""
    model, cfg = lm.model, lm.config
    V = cfg.vocab_size
    counts = data.train_counts[:V].astype(np.float64) + 0.01
    logp_uni = torch.from_numpy(np.log(counts / counts.sum())).float()
    top_uni = int(np.argmax(data.train_counts))
    n = min(n_windows, len(data.heldout) // window)
    windows = torch.from_numpy(data.heldout[: n * window].reshape(n, window))
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for t in ratios:
        ce_sum = acc_sum = uce_sum = uacc_sum = 0.0
        count = 0
        for i in range(0, n, 8):
            x = windows[i:i + 8]
            m = torch.rand(x.shape, generator=gen) < t
            xin = torch.where(m, torch.full_like(x, cfg.mask_token_id), x)
            hidden = model.transformer(xin.to(lm.device))
            logits = model.lm_logits(hidden[m.to(lm.device)]).float().cpu()
            y = x[m]
            ce_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            acc_sum += float((logits.argmax(-1) == y).sum())
            uce_sum += float(-logp_uni[y].sum())
            uacc_sum += float((y == top_uni).sum())
            count += int(m.sum())
        out[f"{t:g}"] = {
            "masked_tokens": count, "model_ce": ce_sum / count, "model_acc": acc_sum / count,
            "unigram_ce": uce_sum / count, "unigram_acc": uacc_sum / count,
            "model_ppl": math.exp(ce_sum / count), "unigram_ppl": math.exp(uce_sum / count),
        }
    return out


# ---------------------------------------------------------------------------------------
# 2. known-concept detection
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def concept_detection(lm: Steerling, data: Data, names: list[str], max_entries: int) -> dict:
    """AUROC of the known head's mean logit over each held-out entry's tokens."""
    model = lm.model
    held = [e for e in data.entries if e["split"] == "heldout"][:max_entries]
    C = model.known_head.n_concepts
    scores = np.zeros((len(held), C), dtype=np.float32)
    labels = np.zeros((len(held), C), dtype=np.int8)
    for i, e in enumerate(held):
        ids = torch.tensor([lm.tokenizer.encode(e["text"])], device=lm.device)
        hidden = model.transformer(ids)[0]
        scores[i] = model.known_head.all_logits(hidden).mean(0).float().cpu().numpy()
        labels[i, e["labels"]] = 1
    per: dict[int, float] = {}
    for c in range(C):
        npos = int(labels[:, c].sum())
        if npos >= 5 and len(held) - npos >= 5:
            per[c] = auroc(scores[:, c], labels[:, c])
    by_kind: dict[str, list[float]] = {}
    for c, a in per.items():
        by_kind.setdefault(concept_kind(names[c]), []).append(a)
    lex = [c for c in range(C) if concept_kind(names[c]) == "lexicographer file"]
    lex_true = [next((c for c in ex["labels"] if c in set(lex)), None) for ex in held]
    lex_pred = [lex[int(np.argmax(scores[i, lex]))] for i in range(len(held))]
    lex_acc = float(np.mean([p == t for p, t in zip(lex_pred, lex_true) if t is not None]))
    best = sorted(per.items(), key=lambda kv: -kv[1])
    return {
        "entries": len(held), "concepts_scored": len(per),
        "macro_auroc": float(np.mean(list(per.values()))) if per else float("nan"),
        "macro_auroc_by_kind": {k: {"n": len(v), "auroc": float(np.mean(v))} for k, v in by_kind.items()},
        "lexfile_top1_acc": lex_acc,
        "best": [(names[c], round(a, 3)) for c, a in best[:5]],
        "worst": [(names[c], round(a, 3)) for c, a in best[-5:]],
    }


# ---------------------------------------------------------------------------------------
# 3. logit mass through known concepts
# ---------------------------------------------------------------------------------------
@torch.no_grad()
def logit_share(lm: Steerling, data: Data, window: int, n_windows: int, t: float = 0.5, seed: int = 1) -> dict:
    """Share of |logit| mass of the target token through the known concepts at masked positions."""
    model, cfg = lm.model, lm.config
    n = min(n_windows, len(data.heldout) // window)
    windows = torch.from_numpy(data.heldout[: n * window].reshape(n, window))
    gen = torch.Generator().manual_seed(seed)
    W = model.lm_head_weight
    sums = {"known": 0.0, "discovered": 0.0, "epsilon": 0.0, "known_top1": 0.0}
    eps_rel = []
    max_err = 0.0
    count = 0
    for i in range(0, n, 8):
        x = windows[i:i + 8]
        m = torch.rand(x.shape, generator=gen) < t
        xin = torch.where(m, torch.full_like(x, cfg.mask_token_id), x).to(lm.device)
        h = model.transformer(xin)[m.to(lm.device)]
        d = decompose(h, model.known_head, model.unknown_head, cfg.concept.use_epsilon_correction)
        logits = model.lm_logits(d.composed).float()
        for target_name, y in (("target", x[m].to(lm.device)), ("top1", logits.argmax(-1))):
            w_y = W[y].float()  # (N, D)
            kn = d.known.weights * torch.einsum("nkd,nd->nk", model.known_head.embedding(d.known.indices).float(), w_y)
            un = d.unknown.weights * torch.einsum("nkd,nd->nk", model.unknown_head.embedding(d.unknown.indices).float(), w_y)
            eps = (d.epsilon.float() * w_y).sum(-1)
            total = kn.abs().sum(-1) + un.abs().sum(-1) + eps.abs()
            share = kn.abs().sum(-1) / total.clamp_min(1e-12)
            if target_name == "target":
                sums["known"] += float(share.sum())
                sums["discovered"] += float((un.abs().sum(-1) / total.clamp_min(1e-12)).sum())
                sums["epsilon"] += float((eps.abs() / total.clamp_min(1e-12)).sum())
                logit = logits.gather(-1, y.unsqueeze(-1)).squeeze(-1)
                max_err = max(max_err, float((kn.sum(-1) + un.sum(-1) + eps - logit).abs().max()))
            else:
                sums["known_top1"] += float(share.sum())
        eps_rel.append((d.epsilon.float().norm(dim=-1) / h.float().norm(dim=-1)).cpu())
        count += int(m.sum())
    rel = torch.cat(eps_rel)
    return {
        "positions": count,
        "known_share": sums["known"] / count, "discovered_share": sums["discovered"] / count,
        "epsilon_share": sums["epsilon"] / count, "known_share_top1_token": sums["known_top1"] / count,
        "epsilon_rel_norm_mean": float(rel.mean()), "identity_max_abs_error": max_err,
    }


# ---------------------------------------------------------------------------------------
# 4. steering
# ---------------------------------------------------------------------------------------
def content_words(text: str) -> list[str]:
    return [w for w in re.findall(r"[A-Za-z]+", text) if len(w) >= 3 and w.lower() not in STOPWORDS]


def wordnet_share(words: list[str], concept: int, lexicon: Lexicon, labels_by_key: dict[str, list[int]]) -> float:
    """Share of ``words`` with at least one WordNet sense labelled with ``concept`` (0 when no words)."""
    if not words:
        return 0.0
    hits = sum(1 for w in words if any(concept in labels_by_key.get(s.key, ()) for s in lexicon.lookup(w)))
    return hits / len(words)


@torch.no_grad()
def detector_prob(lm: Steerling, prompt_ids: list[int], gen_ids: list[int], concept: int) -> float:
    """Mean sigmoid of the concept's known-head logit over the generated tokens, read clean."""
    if not gen_ids:
        return 0.0
    ids = torch.tensor([prompt_ids + gen_ids], device=lm.device)
    hidden = lm.model.transformer(ids)[0, len(prompt_ids):]
    return float(torch.sigmoid(lm.model.known_head.all_logits(hidden)[:, concept]).mean())


def steering_eval(
    lm: Steerling, names: list[str], lexicon: Lexicon, labels_by_key: dict[str, list[int]],
    concepts: list[str], prompts: list[str], seeds: list[int], targets: list[float], max_new_tokens: int,
) -> dict:
    """Steered vs unsteered generations at the same seeds; see the module doc."""
    ids_by_name = {n: i for i, n in enumerate(names)}
    chosen = []
    for c in concepts:
        cid = ids_by_name.get(c)
        if cid is None:  # disambiguated names ("topic: medicine (the branches ...)")
            cid = next((i for i, n in enumerate(names) if n.startswith(c + " (")), None)
        if cid is None:
            print(f"steering: no concept named {c!r}; skipped", file=sys.stderr)
            continue
        chosen.append((c, cid))
    inject_layer = lm.config.concept.inject_layer
    base: dict[tuple[str, int], tuple[list[int], list[int], str, float]] = {}
    gen_tokens, gen_time = 0, 0.0
    for p in prompts:
        for s in seeds:
            gc = GenerationConfig(max_new_tokens=max_new_tokens, seed=s)
            r = lm.generate(p, gc, chat=False)
            base[(p, s)] = (r.prompt_ids, r.token_ids, r.text, r.elapsed_s)
            gen_tokens += r.committed_tokens
            gen_time += r.elapsed_s
    results: dict = {"inject_layer": inject_layer, "max_new_tokens": max_new_tokens, "prompts": prompts,
                     "seeds": seeds, "unsteered_tokens_per_s": gen_tokens / gen_time if gen_time else None,
                     "by_target": {}}
    for target in targets:
        rows = []
        for name, cid in chosen:
            plan = amplify(lm.model, [cid], target=target, inject_layer=inject_layer, cutoff_tokens=max_new_tokens)
            det_wins = wn_wins = 0.0
            det_u, det_s, wn_u, wn_s = [], [], [], []
            example = None
            for p in prompts:
                for s in seeds:
                    pids, uids, utext, _ = base[(p, s)]
                    r = lm.generate(p, GenerationConfig(max_new_tokens=max_new_tokens, seed=s), steering=plan, chat=False)
                    du, ds = detector_prob(lm, pids, uids, cid), detector_prob(lm, pids, r.token_ids, cid)
                    wu = wordnet_share(content_words(utext), cid, lexicon, labels_by_key)
                    ws = wordnet_share(content_words(r.text), cid, lexicon, labels_by_key)
                    det_wins += 1.0 if ds > du else 0.5 if ds == du else 0.0
                    wn_wins += 1.0 if ws > wu else 0.5 if ws == wu else 0.0
                    det_u.append(du), det_s.append(ds), wn_u.append(wu), wn_s.append(ws)
                    if example is None:
                        example = {"prompt": p, "seed": s, "unsteered": utext, "steered": r.text}
            n = len(det_u)
            rows.append({
                "concept": name, "concept_id": cid, "pairs": n,
                "attribution_win_rate": det_wins / n, "detector_unsteered": float(np.mean(det_u)),
                "detector_steered": float(np.mean(det_s)),
                "wordnet_win_rate": wn_wins / n, "wordnet_share_unsteered": float(np.mean(wn_u)),
                "wordnet_share_steered": float(np.mean(wn_s)), "example": example,
            })
        results["by_target"][f"{target:g}"] = {
            "concepts": rows,
            "mean_attribution_win_rate": float(np.mean([r["attribution_win_rate"] for r in rows])) if rows else None,
            "mean_wordnet_win_rate": float(np.mean([r["wordnet_win_rate"] for r in rows])) if rows else None,
        }
    return results


# ---------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------
def markdown(res: dict, heading: str = "###") -> str:
    """The figures as Markdown tables (for the model card and BENCHMARKS.md)."""
    L: list[str] = []
    L.append(f"Measured by `scripts/eval_demo.py` on {res['machine']} ({res['date']}; model `{res['model']}`, "
             f"{res['dtype']}; wall time {res['seconds']:.0f} s; other jobs shared the CPU, so timings are noisy).")
    L += ["", f"{heading} Held-out masked-token loss (nats/token) and accuracy", "",
          "| mask ratio | masked tokens | model CE | model acc | unigram CE | unigram acc |", "|---|---|---|---|---|---|"]
    for t, r in res["masked_lm"].items():
        L.append(f"| {t} | {r['masked_tokens']:,} | {r['model_ce']:.3f} (ppl {r['model_ppl']:.0f}) | {100 * r['model_acc']:.1f} % "
                 f"| {r['unigram_ce']:.3f} (ppl {r['unigram_ppl']:.0f}) | {100 * r['unigram_acc']:.1f} % |")
    d = res["concept_detection"]
    L += ["", f"{heading} Known-concept detection on held-out glosses", "",
          f"{d['entries']} held-out entries, {d['concepts_scored']} concepts with >= 5 positives and negatives: "
          f"macro AUROC **{d['macro_auroc']:.3f}**; lexicographer-file top-1 accuracy {100 * d['lexfile_top1_acc']:.1f} %.", "",
          "| kind | concepts | macro AUROC |", "|---|---|---|"]
    for k, v in d["macro_auroc_by_kind"].items():
        L.append(f"| {k} | {v['n']} | {v['auroc']:.3f} |")
    L += ["", "Best: " + ", ".join(f"{n} {a}" for n, a in d["best"]) + ". Worst: "
          + ", ".join(f"{n} {a}" for n, a in d["worst"]) + "."]
    s = res["logit_share"]
    L += ["", f"{heading} Logit mass through known concepts", "",
          f"At {s['positions']:,} masked held-out positions (t = 0.5), of the target token's logit: known "
          f"**{100 * s['known_share']:.1f} %**, discovered {100 * s['discovered_share']:.1f} %, epsilon "
          f"{100 * s['epsilon_share']:.1f} % (per-concept absolute contributions, as the reference's attribution); "
          f"of the top-1 predicted token's logit: known {100 * s['known_share_top1_token']:.1f} %. "
          f"Mean ||epsilon|| / ||hidden|| = {s['epsilon_rel_norm_mean']:.3f}; known + discovered + epsilon == logit "
          f"to {s['identity_max_abs_error']:.1e}."]
    st = res["steering"]
    L += ["", f"{heading} Steering success", "",
          f"`amplify(model, [concept], target=T, inject_layer={st['inject_layer']})`, {st['max_new_tokens']} new tokens, "
          f"{len(st['prompts'])} prompts ({', '.join(repr(p) for p in st['prompts'])}) x {len(st['seeds'])} seeds, "
          "steered vs unsteered at the same seed. Win rate: share of pairs where the steered text scores higher "
          "(ties count half); attribution: the concept detector's mean probability over the generated tokens, "
          "re-read without steering; WordNet: share of content words with a sense labelled with the concept.", ""]
    for target, block in st["by_target"].items():
        L += [f"Target {target} logits: mean win rate by attribution **{100 * block['mean_attribution_win_rate']:.0f} %**, "
              f"by WordNet **{100 * block['mean_wordnet_win_rate']:.0f} %**.", "",
              "| concept | win (attribution) | detector p unsteered -> steered | win (WordNet) | WordNet share unsteered -> steered |",
              "|---|---|---|---|---|"]
        for r in block["concepts"]:
            L.append(f"| {r['concept']} | {100 * r['attribution_win_rate']:.0f} % | {r['detector_unsteered']:.3f} -> "
                     f"{r['detector_steered']:.3f} | {100 * r['wordnet_win_rate']:.0f} % | "
                     f"{100 * r['wordnet_share_unsteered']:.1f} % -> {100 * r['wordnet_share_steered']:.1f} % |")
        L.append("")
    first = next(iter(st["by_target"].values()), None)
    if first:
        L += [f"Examples (target {next(iter(st['by_target']))}, first prompt and seed):", ""]
        for r in first["concepts"][:4]:
            ex = r["example"]
            L.append(f"- **{r['concept']}**, prompt {ex['prompt']!r}: unsteered `{_clip(ex['unsteered'])}` -> "
                     f"steered `{_clip(ex['steered'])}`")
    if st.get("unsteered_tokens_per_s"):
        L += ["", f"Generation speed of the unsteered runs: {st['unsteered_tokens_per_s']:.0f} tokens/s ({res['dtype']}, CPU, noisy)."]
    return "\n".join(L)


def _clip(text: str, n: int = 110) -> str:
    text = " ".join(text.split()).replace("`", "'")
    return text if len(text) <= n else text[: n - 1] + "…"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--data", type=Path, default=REPO / "checkpoints" / "data" / "wordnet")
    p.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR)
    p.add_argument("--out", type=Path, default=REPO / "checkpoints" / "eval" / "default-model.json")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--window", type=int, default=256)
    p.add_argument("--windows", type=int, default=200, help="held-out windows for the loss (at most the stream)")
    p.add_argument("--entries", type=int, default=100000, help="held-out entries for AUROC (at most all)")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--targets", type=float, nargs="+", default=[1.0, 4.0],
                   help="amplify targets in logit units (the reference default 8 overwhelms a 128-dim model)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true", help="a smoke run: few windows, entries, seeds, concepts")
    p.add_argument("--update-card", action="store_true", help="write the figures into the model's MODEL_CARD.md")
    p.add_argument("--update-benchmarks", action="store_true", help="write them into BENCHMARKS.md (section of issue 6)")
    p.add_argument("--from-json", type=Path, metavar="FILE", help="re-render the results of an earlier run (its --out file)")
    args = p.parse_args(argv)
    if args.from_json:
        report(json.loads(args.from_json.read_text()), args)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.windows, args.entries, args.seeds, args.targets = 8, 200, 1, args.targets[:1]
    t0 = time.perf_counter()
    lm = Steerling.load(args.model, device="cpu", dtype=args.dtype)
    import pandas as pd

    labels = pd.read_parquet(args.model / "concept_labels.parquet")
    known = labels[labels["head"] == "known"].sort_values("concept_id")
    names = known["concept_name"].tolist()
    data = load_data(args.data)
    lexicon = Lexicon(load_wordnet(args.wordnet_dir), load_exceptions(args.wordnet_dir))
    res: dict = {"model": str(args.model.relative_to(REPO)) if args.model.is_relative_to(REPO) else str(args.model),
                 "machine": machine(), "date": time.strftime("%Y-%m-%d"), "dtype": args.dtype}
    print("masked LM ...", file=sys.stderr)
    res["masked_lm"] = masked_lm(lm, data, args.window, args.windows, [0.15, 0.5, 0.85])
    print("concept detection ...", file=sys.stderr)
    res["concept_detection"] = concept_detection(lm, data, names, args.entries)
    print("logit share ...", file=sys.stderr)
    res["logit_share"] = logit_share(lm, data, args.window, min(args.windows, 64))
    print("steering ...", file=sys.stderr)
    concepts = STEER_CONCEPTS[:3] if args.quick else STEER_CONCEPTS
    res["steering"] = steering_eval(lm, names, lexicon, data.labels_by_key, concepts, PROMPTS,
                                    list(range(args.seeds)), args.targets, args.max_new_tokens)
    res["seconds"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    report(res, args)
    return 0


def training_line(card_text: str) -> str | None:
    """The ``- Steps: ...`` line of a model card's training section (written by train.py)."""
    for line in card_text.splitlines():
        if line.startswith("- Steps:"):
            return line[2:]
    return None


def report(res: dict, args: argparse.Namespace) -> None:
    """Print the Markdown and write it into the model card / BENCHMARKS.md as asked."""
    md = markdown(res)
    print(md)
    if args.update_card:
        card = args.model / "MODEL_CARD.md"
        text = card.read_text(encoding="utf-8") if card.is_file() else "# Model card\n"
        card.write_text(replace_section(text, EVAL_START, EVAL_END, "## Evaluation\n\n" + md), encoding="utf-8")
    if args.update_benchmarks:
        bench = REPO / "BENCHMARKS.md"
        text = bench.read_text(encoding="utf-8") if bench.is_file() else "# Benchmarks\n"
        card = args.model / "MODEL_CARD.md"
        trained = training_line(card.read_text(encoding="utf-8")) if card.is_file() else None
        body = ("## Default model (issue 6)\n\nThe shipped default model "
                "(`steerling_lite/assets/default-model`, see its MODEL_CARD.md), trained by "
                "`scripts/train.py configs/train/default.toml`"
                + (f": {trained[0].lower() + trained[1:]}" if trained else ".") + "\n\n" + markdown(res, "###"))
        bench.write_text(replace_section(text, BENCH_START, BENCH_END, body), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
