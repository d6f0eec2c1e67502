#!/usr/bin/env python3
"""Build the training corpus and the known-concept catalog of the default model from WordNet 3.0.

Source: the WordNet 3.0 database files (``data.noun``, ``data.verb``, ``data.adj``,
``data.adv``), which Debian ships offline in the ``wordnet-base`` package
(``apt-get install wordnet-base`` puts them under ``/usr/share/wordnet``). Any subset of
the four files works (the tests use a few-KB sample under ``tests/data/wordnet_sample``).

Every synset becomes one corpus entry, a labelled span::

    Dog, domestic dog: a member of the genus Canis ... in many breeds. The dog barked all night.

(its words, its definition, its example sentences). Its known-concept labels are

- its **lexicographer file** (the 45 WordNet "lexnames": ``noun.animal``, ``noun.food``,
  ``verb.motion``, ...),
- the **topic domains** (``;c`` pointers: medicine, law, music, ...) of it or of any of its
  hypernyms, for domains with at least ``--min-topic-members`` member synsets,
- its **categories**: hypernym ancestors (``@``/``@i`` pointers) among the noun and verb
  synsets with between ``--min-category`` and ``--max-category`` descendants (``dog``,
  ``fruit``, ``vehicle``, ``bird``, ...), at most ``--max-categories`` of them.

Output (``--out``, default ``checkpoints/data/wordnet``; git-ignored; ``--corpus-out`` also writes the
training text as the package ships it)::

    meta.json                  counts, source, options, split
    known_concepts.parquet     the known rows of concept_labels.parquet (published columns)
    entries.jsonl              one entry per synset: text, split, labels, pos, lexfile
    {train,heldout}_tokens.npy uint32 token ids (cl100k + Steerling specials), entries joined by "\\n"
    {train,heldout}_spans.npy  int32 per token: the entry (index into entries.jsonl) it belongs to, -1 between entries
    labels_offsets.npy         int64 (n_entries + 1,): CSR offsets into labels_ids
    labels_ids.npy             int32: the known concept ids of each entry

The held-out split is a random ``--heldout-frac`` of the synsets (seeded). The words of
the WordNet lexicon (lemma -> synsets) that ``scripts/eval_demo.py`` uses to judge
generated words are read from the same files by :func:`load_wordnet`.

WordNet 3.0 license: "WordNet 3.0 Copyright 2006 by Princeton University. All rights
reserved." Permission to use, copy, modify and distribute for any purpose, with the
copyright notice kept (https://wordnet.princeton.edu/license-and-commercial-use).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

DEFAULT_WORDNET_DIR = Path("/usr/share/wordnet")
DATA_FILES = {"n": "data.noun", "v": "data.verb", "a": "data.adj", "r": "data.adv"}
EXC_FILES = {"n": "noun.exc", "v": "verb.exc", "a": "adj.exc", "r": "adv.exc"}

# The 45 lexicographer files of WordNet 3.0 and their descriptions (lexnames(5WN)).
LEXNAMES: list[tuple[str, str]] = [
    ("adj.all", "all adjective clusters"),
    ("adj.pert", "relational adjectives (pertainyms)"),
    ("adv.all", "all adverbs"),
    ("noun.Tops", "unique beginner for nouns"),
    ("noun.act", "nouns denoting acts or actions"),
    ("noun.animal", "nouns denoting animals"),
    ("noun.artifact", "nouns denoting man-made objects"),
    ("noun.attribute", "nouns denoting attributes of people and objects"),
    ("noun.body", "nouns denoting body parts"),
    ("noun.cognition", "nouns denoting cognitive processes and contents"),
    ("noun.communication", "nouns denoting communicative processes and contents"),
    ("noun.event", "nouns denoting natural events"),
    ("noun.feeling", "nouns denoting feelings and emotions"),
    ("noun.food", "nouns denoting foods and drinks"),
    ("noun.group", "nouns denoting groupings of people or objects"),
    ("noun.location", "nouns denoting spatial position"),
    ("noun.motive", "nouns denoting goals"),
    ("noun.object", "nouns denoting natural objects (not man-made)"),
    ("noun.person", "nouns denoting people"),
    ("noun.phenomenon", "nouns denoting natural phenomena"),
    ("noun.plant", "nouns denoting plants"),
    ("noun.possession", "nouns denoting possession and transfer of possession"),
    ("noun.process", "nouns denoting natural processes"),
    ("noun.quantity", "nouns denoting quantities and units of measure"),
    ("noun.relation", "nouns denoting relations between people or things or ideas"),
    ("noun.shape", "nouns denoting two and three dimensional shapes"),
    ("noun.state", "nouns denoting stable states of affairs"),
    ("noun.substance", "nouns denoting substances"),
    ("noun.time", "nouns denoting time and temporal relations"),
    ("verb.body", "verbs of grooming, dressing and bodily care"),
    ("verb.change", "verbs of size, temperature change, intensifying, etc."),
    ("verb.cognition", "verbs of thinking, judging, analyzing, doubting"),
    ("verb.communication", "verbs of telling, asking, ordering, singing"),
    ("verb.competition", "verbs of fighting, athletic activities"),
    ("verb.consumption", "verbs of eating and drinking"),
    ("verb.contact", "verbs of touching, hitting, tying, digging"),
    ("verb.creation", "verbs of sewing, baking, painting, performing"),
    ("verb.emotion", "verbs of feeling"),
    ("verb.motion", "verbs of walking, flying, swimming"),
    ("verb.perception", "verbs of seeing, hearing, feeling"),
    ("verb.possession", "verbs of buying, selling, owning"),
    ("verb.social", "verbs of political and social activities and events"),
    ("verb.stative", "verbs of being, having, spatial relations"),
    ("verb.weather", "verbs of raining, snowing, thawing, thundering"),
    ("adj.ppl", "participial adjectives"),
]
TONE_LEXNAMES = {"noun.feeling", "verb.emotion"}
# Categories flagged is_demographic (groups of people by origin, ethnicity, sex, age or religion).
DEMOGRAPHIC_CATEGORIES = {
    "person of color", "Amerindian", "Amerind", "European", "Asian", "Indo-European", "woman", "female",
    "adult", "religious person", "people", "inhabitant", "male", "man", "child", "juvenile",
}
LABEL_COLUMNS = [
    "concept_id", "concept_name", "concept_description", "head", "public_group_id",
    "group_name", "is_steerable", "is_tone", "is_alignment", "is_demographic",
]


@dataclass
class Synset:
    """One WordNet synset as the data file gives it.

    Attributes:
        key: ``"n00001740"`` (part of speech + byte offset): unique across the four files.
        pos: ``n``, ``v``, ``a`` (satellites included) or ``r``.
        lexfile: index into :data:`LEXNAMES`.
        words: its lemmas, underscores turned into spaces, adjective markers removed.
        hypernyms: keys of its ``@`` and ``@i`` targets.
        topics: keys of its ``;c`` (topic domain) targets.
        definition: the gloss without the examples.
        examples: the quoted example sentences of the gloss.
    """

    key: str
    pos: str
    lexfile: int
    words: list[str]
    hypernyms: list[str] = field(default_factory=list)
    topics: list[str] = field(default_factory=list)
    definition: str = ""
    examples: list[str] = field(default_factory=list)


_ADJ_MARKER = re.compile(r"\((a|p|ip)\)$")
_QUOTED = re.compile(r'"([^"]*)"')


def parse_data_line(line: str) -> Synset | None:
    """Parse one line of a WordNet ``data.*`` file (wndb(5WN)); None for license header lines.

    Raises:
        ValueError: a malformed line (the message quotes its start).
    """
    if line.startswith("  ") or not line.strip():
        return None
    head, _, gloss = line.partition(" | ")
    f = head.split()
    try:
        offset, lexfile, ss_type = f[0], int(f[1]), f[2]
        n_words = int(f[3], 16)
        words = [f[4 + 2 * i] for i in range(n_words)]
        i = 4 + 2 * n_words
        n_ptrs = int(f[i])
        i += 1
        pos = "a" if ss_type == "s" else ss_type
        hypernyms, topics = [], []
        for _ in range(n_ptrs):
            sym, target, tpos = f[i], f[i + 1], f[i + 2]
            tkey = ("a" if tpos == "s" else tpos) + target
            if sym in ("@", "@i"):
                hypernyms.append(tkey)
            elif sym == ";c":
                topics.append(tkey)
            i += 4
    except (IndexError, ValueError) as exc:
        raise ValueError(f"malformed WordNet data line: {line[:60]!r} ({exc})") from exc
    words = [_ADJ_MARKER.sub("", w).replace("_", " ") for w in words]
    gloss = gloss.strip()
    examples = [e.strip() for e in _QUOTED.findall(gloss) if e.strip()]
    definition = gloss.split('"', 1)[0].strip().rstrip(";").strip()
    return Synset(pos + offset, pos, lexfile, words, hypernyms, topics, definition, examples)


def load_wordnet(wordnet_dir: Path) -> dict[str, Synset]:
    """All synsets of the ``data.*`` files found in ``wordnet_dir``, by key.

    Raises:
        FileNotFoundError: none of data.noun / data.verb / data.adj / data.adv is there.
    """
    out: dict[str, Synset] = {}
    found = False
    for pos, name in DATA_FILES.items():
        path = wordnet_dir / name
        if not path.is_file():
            continue
        found = True
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                s = parse_data_line(line)
                if s is not None:
                    out[s.key] = s
    if not found:
        raise FileNotFoundError(
            f"{wordnet_dir}: no WordNet data files ({', '.join(DATA_FILES.values())}); "
            "install them with `apt-get install wordnet-base` or pass --wordnet-dir"
        )
    return out


def load_exceptions(wordnet_dir: Path) -> dict[str, dict[str, list[str]]]:
    """Irregular inflections ``{pos: {form: [lemmas]}}`` from the ``*.exc`` files (missing files: empty)."""
    out: dict[str, dict[str, list[str]]] = {p: {} for p in EXC_FILES}
    for pos, name in EXC_FILES.items():
        path = wordnet_dir / name
        if path.is_file():
            for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
                parts = line.split()
                if len(parts) >= 2:
                    out[pos][parts[0]] = parts[1:]
    return out


# Morphy's detachment rules (WordNet morphy(7WN)).
_SUFFIXES = {
    "n": [("s", ""), ("ses", "s"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"), ("men", "man"), ("ies", "y")],
    "v": [("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")],
    "a": [("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    "r": [],
}


class Lexicon:
    """Word -> synsets lookup with WordNet's morphology (morphy): exceptions, then suffix rules."""

    def __init__(self, synsets: dict[str, Synset], exceptions: dict[str, dict[str, list[str]]] | None = None):
        self.synsets = synsets
        self.exceptions = exceptions or {}
        self.index: dict[tuple[str, str], list[str]] = defaultdict(list)
        for s in synsets.values():
            for w in s.words:
                self.index[(w.lower(), s.pos)].append(s.key)

    def lookup(self, word: str) -> list[Synset]:
        """Synsets of ``word`` in any part of speech (base forms found by morphy), most frequent sense first."""
        word = word.lower()
        out: list[str] = []
        for pos in ("n", "v", "a", "r"):
            forms = [word] + self.exceptions.get(pos, {}).get(word, [])
            forms += [word[: -len(suf)] + rep for suf, rep in _SUFFIXES[pos] if word.endswith(suf) and len(word) > len(suf)]
            for form in dict.fromkeys(forms):
                for key in self.index.get((form, pos), ()):
                    if key not in out:
                        out.append(key)
        return [self.synsets[k] for k in out]


def entry_text(s: Synset) -> str:
    """The corpus text of one synset: ``Words: definition. Example. Example.``"""
    words = ", ".join(dict.fromkeys(s.words))
    words = words[:1].upper() + words[1:]
    text = f"{words}: {s.definition.rstrip('.')}." if s.definition else f"{words}."
    for ex in s.examples:
        ex = ex.strip().rstrip(".;,")
        if ex:
            text += " " + ex[:1].upper() + ex[1:] + "."
    return text


def ancestors(synsets: dict[str, Synset]) -> dict[str, set[str]]:
    """Every synset's transitive hypernyms (keys present in ``synsets``)."""
    memo: dict[str, set[str]] = {}

    def visit(key: str, stack: set[str]) -> set[str]:
        if key in memo:
            return memo[key]
        out: set[str] = set()
        for h in synsets[key].hypernyms:
            if h in synsets and h not in stack:
                out.add(h)
                out |= visit(h, stack | {h})
        memo[key] = out
        return out

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for k in synsets:
        visit(k, {k})
    return memo


@dataclass
class Catalog:
    """The known concepts and each synset's labels.

    Attributes:
        rows: one dict per known concept with the published concept_labels.parquet columns.
        labels: synset key -> sorted known concept ids.
    """

    rows: list[dict]
    labels: dict[str, list[int]]


def build_catalog(
    synsets: dict[str, Synset],
    min_topic_members: int = 30,
    min_category: int = 40,
    max_category: int = 3000,
    max_categories: int = 400,
    min_positives: int = 1,
) -> Catalog:
    """Known concepts: the lexicographer files present, the topic domains with at least
    ``min_topic_members`` members (inherited down the hypernym tree) and the noun/verb
    category synsets with ``min_category..max_category`` descendants (the most populous
    ``max_categories``, skipping one that covers over 90 % of a chosen parent's descendants).
    Concepts with fewer than ``min_positives`` labelled synsets are dropped."""
    anc = ancestors(synsets)
    # topic domains, inherited from hypernyms
    topic_of: dict[str, set[str]] = {}
    for k, s in synsets.items():
        t = set(s.topics)
        for a in anc[k]:
            t.update(synsets[a].topics)
        topic_of[k] = {x for x in t if x in synsets}
    topic_count: dict[str, int] = defaultdict(int)
    for t in topic_of.values():
        for x in t:
            topic_count[x] += 1
    topics = sorted((x for x, n in topic_count.items() if n >= min_topic_members), key=lambda x: (-topic_count[x], x))
    # categories: noun/verb synsets with a mid-sized subtree
    desc_count: dict[str, int] = defaultdict(int)
    for k in synsets:
        for a in anc[k]:
            desc_count[a] += 1
    cands = sorted(
        (k for k, n in desc_count.items() if synsets[k].pos in "nv" and min_category <= n <= max_category),
        key=lambda k: (-desc_count[k], k),
    )
    chosen: list[str] = []
    chosen_set: set[str] = set()
    for k in cands:
        if len(chosen) >= max_categories:
            break
        redundant = any(p in chosen_set and desc_count[k] > 0.9 * desc_count[p] for p in synsets[k].hypernyms)
        if not redundant:
            chosen.append(k)
            chosen_set.add(k)

    lex_present = sorted({s.lexfile for s in synsets.values()})
    rows: list[dict] = []
    lex_id: dict[int, int] = {}
    topic_id: dict[str, int] = {}
    cat_id: dict[str, int] = {}

    def name_of(key: str) -> str:
        return synsets[key].words[0]

    for lf in lex_present:
        name, desc = LEXNAMES[lf]
        lex_id[lf] = len(rows)
        rows.append(dict(concept_name=name, concept_description=f"WordNet lexicographer file {name}: {desc}",
                         group=lex_id[lf], group_name=name, is_tone=name in TONE_LEXNAMES))
    for t in topics:
        topic_id[t] = len(rows)
        rows.append(dict(concept_name=f"topic: {name_of(t)}",
                         concept_description=f"WordNet topic domain '{name_of(t)}' ({synsets[t].definition})",
                         group=None, group_name=None, is_tone=False))
    for c in chosen:
        cat_id[c] = len(rows)
        lf = synsets[c].lexfile
        rows.append(dict(concept_name=f"category: {name_of(c)}",
                         concept_description=f"kinds of {name_of(c)} ({synsets[c].definition}); {desc_count[c]} WordNet synsets",
                         group=lex_id[lf], group_name=LEXNAMES[lf][0], is_tone=LEXNAMES[lf][0] in TONE_LEXNAMES))
    labels: dict[str, list[int]] = {}
    for k, s in synsets.items():
        ids = {lex_id[s.lexfile]}
        ids.update(topic_id[t] for t in topic_of[k] if t in topic_id)
        ids.update(cat_id[a] for a in anc[k] | {k} if a in cat_id)
        labels[k] = sorted(ids)
    # drop concepts without enough positives and renumber
    counts = np.zeros(len(rows), dtype=np.int64)
    for ids in labels.values():
        counts[ids] += 1
    keep = [i for i in range(len(rows)) if counts[i] >= min_positives]
    remap = {old: new for new, old in enumerate(keep)}
    out_rows = []
    for old in keep:
        r = rows[old]
        g = r["group"]
        out_rows.append({
            "concept_id": remap[old],
            "concept_name": r["concept_name"],
            "concept_description": r["concept_description"],
            "head": "known",
            "public_group_id": remap.get(g) if g is not None else None,
            "group_name": r["group_name"] if g is not None and g in remap else None,
            "is_steerable": True,
            "is_tone": bool(r["is_tone"]),
            "is_alignment": False,
            "is_demographic": r["concept_name"].removeprefix("category: ") in DEMOGRAPHIC_CATEGORIES,
            "n_synsets": int(counts[old]),
        })
    labels = {k: [remap[i] for i in ids if i in remap] for k, ids in labels.items()}
    _disambiguate(out_rows)
    return Catalog(out_rows, labels)


def _disambiguate(rows: list[dict]) -> None:
    """Make concept names unique: a repeated name gets the start of its description's gloss."""
    seen: dict[str, int] = defaultdict(int)
    for r in rows:
        seen[r["concept_name"]] += 1
    for r in rows:
        if seen[r["concept_name"]] > 1:
            gloss = r["concept_description"].split("(", 1)[-1].rsplit(")", 1)[0]
            words = re.sub(r"[^\w\s'-]", " ", gloss).split()[:4]
            r["concept_name"] += " (" + " ".join(words) + ")"
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[r["concept_name"]] += 1
        if counts[r["concept_name"]] > 1:
            r["concept_name"] += f" #{counts[r['concept_name']]}"


def labels_frame(rows: list[dict]):
    """A pandas DataFrame with exactly the published concept_labels.parquet columns and dtypes
    (``public_group_id`` nullable Int64)."""
    import pandas as pd

    df = pd.DataFrame([{c: r.get(c) for c in LABEL_COLUMNS} for r in rows], columns=LABEL_COLUMNS)
    df["concept_id"] = df["concept_id"].astype("int64")
    df["public_group_id"] = df["public_group_id"].astype("Int64")
    for c in ("is_steerable", "is_tone", "is_alignment", "is_demographic"):
        df[c] = df[c].astype(bool)
    for c in ("concept_name", "concept_description", "head", "group_name"):
        df[c] = df[c].astype(object)
    return df


def write_training_corpus(entries: Path, out: Path) -> None:
    """The training split's entries, one per line in corpus order (their tokens, each line followed
    by the newline token, are exactly ``train_tokens.npy``), xz-compressed (preset 9e) to ``out``."""
    import lzma

    lines = []
    with open(entries, encoding="utf-8") as f:
        for line in f:
            e = json.loads(line)
            if e["split"] == "train":
                lines.append(e["text"])
    data = ("\n".join(lines) + "\n").encode("utf-8")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_bytes(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wordnet-dir", type=Path, default=DEFAULT_WORDNET_DIR)
    p.add_argument("--out", type=Path, default=Path("checkpoints/data/wordnet"))
    p.add_argument("--heldout-frac", type=float, default=0.02)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--min-topic-members", type=int, default=30)
    p.add_argument("--min-category", type=int, default=40)
    p.add_argument("--max-category", type=int, default=3000)
    p.add_argument("--max-categories", type=int, default=400)
    p.add_argument("--min-positives", type=int, default=1)
    p.add_argument("--corpus-out", type=Path, metavar="FILE.xz",
                   help="also write the training split's text (one entry per line, training order) xz-compressed; "
                        "the package ships it as steerling_lite/assets/default-model/training-corpus.txt.xz")
    args = p.parse_args(argv)

    import pandas as pd  # noqa: F401  (parquet writing)

    from steerling_lite.loading.tokenizer import SteerlingTokenizer

    synsets = load_wordnet(args.wordnet_dir)
    catalog = build_catalog(synsets, args.min_topic_members, args.min_category, args.max_category,
                            args.max_categories, args.min_positives)
    keys = sorted(synsets)
    rng = random.Random(args.seed)
    rng.shuffle(keys)  # corpus order: shuffled, so neighbouring entries are unrelated
    n_held = max(1, int(round(len(keys) * args.heldout_frac))) if len(keys) > 1 else 0
    held = set(keys[:n_held])
    tok = SteerlingTokenizer()
    newline = tok.encode("\n")
    streams: dict[str, tuple[list[int], list[int]]] = {"train": ([], []), "heldout": ([], [])}
    offsets = [0]
    label_ids: list[int] = []
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "entries.jsonl.tmp", "w", encoding="utf-8") as f:
        for i, k in enumerate(keys):
            s = synsets[k]
            text = entry_text(s)
            split = "heldout" if k in held else "train"
            ids = tok.encode(text)
            toks, spans = streams[split]
            toks.extend(ids)
            spans.extend([i] * len(ids))
            toks.extend(newline)
            spans.extend([-1] * len(newline))
            labels = catalog.labels[k]
            label_ids.extend(labels)
            offsets.append(len(label_ids))
            f.write(json.dumps({"index": i, "key": k, "split": split, "pos": s.pos,
                                "lexfile": LEXNAMES[s.lexfile][0], "labels": labels, "text": text}) + "\n")
    (args.out / "entries.jsonl.tmp").replace(args.out / "entries.jsonl")
    for split, (toks, spans) in streams.items():
        np.save(args.out / f"{split}_tokens.npy", np.asarray(toks, dtype=np.uint32))
        np.save(args.out / f"{split}_spans.npy", np.asarray(spans, dtype=np.int32))
    np.save(args.out / "labels_offsets.npy", np.asarray(offsets, dtype=np.int64))
    np.save(args.out / "labels_ids.npy", np.asarray(label_ids, dtype=np.int32))
    labels_frame(catalog.rows).to_parquet(args.out / "known_concepts.parquet", index=False)
    n_by_kind = defaultdict(int)
    for r in catalog.rows:
        kind = "topic" if r["concept_name"].startswith("topic:") else "category" if r["concept_name"].startswith("category:") else "lexfile"
        n_by_kind[kind] += 1
    meta = {
        "source": "WordNet 3.0 (Princeton University), " + str(args.wordnet_dir),
        "n_synsets": len(synsets),
        "n_entries": len(keys),
        "n_heldout_entries": n_held,
        "n_known_concepts": len(catalog.rows),
        "known_concepts_by_kind": dict(n_by_kind),
        "train_tokens": len(streams["train"][0]),
        "heldout_tokens": len(streams["heldout"][0]),
        "distinct_train_tokens": int(len(set(streams["train"][0]))),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
    }
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2))
    if args.corpus_out is not None:
        write_training_corpus(args.out / "entries.jsonl", args.corpus_out)
    print(json.dumps(meta, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
