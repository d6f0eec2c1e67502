#!/usr/bin/env python3
"""Attribution overhead: tokens/s of a generation with and without concept attribution.

"Without" is ``Steerling.generate``; "with" is ``explain`` (the same generation streamed with
``capture_hidden=True`` and every committed token decomposed into known / discovered /
tail / epsilon contributions as it is committed). Same checkpoint, prompt and seed; runs
are interleaved and the median of ``--repeats`` is reported, with the ratio (target:
at most 1.5x slower). Optionally also times integrated-gradients input attribution.
Default: the tiny preset, fp32, CPU, a 64-token prompt, 128 new tokens, one step per token.

    python scripts/bench_attribution.py
    python scripts/bench_attribution.py --steps 32 --repeats 7
    python scripts/bench_attribution.py --ig-tokens 8 --ig-steps 32
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from _common import machine, prompt_ids  # noqa: E402

from steerling_lite import (  # noqa: E402
    ConceptCatalog, GenerationConfig, Steerling, explain, explain_stream, input_attribution,
)
from steerling_lite.loading.random_checkpoint import preset_config, write_random_checkpoint  # noqa: E402

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint directory (default: write the tiny preset to a temp dir)")
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--steps", type=int, help="default: one per new token")
    p.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--quant", default="none", choices=["none", "int8", "nf4"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=5, help="timed runs of each (median reported)")
    p.add_argument("--ig-tokens", type=int, default=0, help="also time input attribution of this many tokens")
    p.add_argument("--ig-steps", type=int, default=32, help="integrated-gradients steps (default 32)")
    args = p.parse_args(argv)

    tmp = None
    if args.model:
        model_dir = Path(args.model)
    else:
        tmp = tempfile.TemporaryDirectory()
        model_dir = write_random_checkpoint(Path(tmp.name) / "tiny", preset_config("tiny"), seed=0)
    lm = Steerling.load(model_dir, device=args.device, dtype=args.dtype, quant=args.quant)
    ids = prompt_ids(lm.tokenizer, args.prompt_tokens)
    steps = args.steps or args.new_tokens
    cfg = GenerationConfig(max_new_tokens=args.new_tokens, steps=steps, seed=args.seed)
    catalog = ConceptCatalog.for_model(lm)  # read once, as an app would

    B = lm.config.diff_block_size
    warm = GenerationConfig(max_new_tokens=B, steps=B // 4 or 1, seed=0)
    lm.generate(ids, warm)
    explain(lm, ids, warm, catalog=catalog)

    def explained():
        """explain(), timing the recorder's share (the attribution arithmetic) on the side."""
        stream = explain_stream(lm, ids, cfg, catalog=catalog)
        rec, spent = stream.recorder, [0.0]
        inner = rec.record

        def timed(event):
            t0 = time.perf_counter()
            out = inner(event)
            spent[0] += time.perf_counter() - t0
            return out

        rec.record = timed
        return stream.run(), spent[0]

    plain_t, attr_t, rec_t = [], [], []
    plain = attributed = None
    for _ in range(args.repeats):  # interleaved, so that load changes hit both alike
        t = time.perf_counter()
        plain = lm.generate(ids, cfg)
        plain_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        attributed, spent = explained()
        attr_t.append(time.perf_counter() - t)
        rec_t.append(spent)
    assert plain is not None and attributed is not None and attributed.result is not None
    same = attributed.result.sequence == plain.sequence
    check = attributed.verify()
    n = args.new_tokens
    p_s, a_s = statistics.median(plain_t), statistics.median(attr_t)
    print(f"machine: {machine()}")
    print(f"checkpoint: {model_dir}  ({lm.dtype}, quant {lm.quant if hasattr(lm, 'quant') else 'none'}, {lm.device})")
    print(f"prompt {len(ids)} tokens, {n} new tokens, {steps} steps, entropy sampling, seed {args.seed}, "
          f"{args.repeats} runs each")
    print(f"without attribution: {p_s:7.3f} s  {n / p_s:8.1f} tokens/s")
    r_s = statistics.median(rec_t)
    print(f"with attribution:    {a_s:7.3f} s  {n / a_s:8.1f} tokens/s   (x{a_s / p_s:.2f} the time)")
    print(f"  of which the attribution arithmetic: {r_s:.3f} s ({r_s / n * 1000:.2f} ms per token, "
          f"{100 * r_s / a_s:.1f}% of the run); the rest is generation with capture_hidden")
    print(f"same tokens: {same}   verify: {'pass' if check.passed else 'FAIL'} (max error {check.max_abs_error:.1e})")
    row = (f"| {args.dtype} | {args.quant} | {len(ids)} | {n} | {steps} | {n / p_s:.1f} | {n / a_s:.1f} "
           f"| {a_s / p_s:.2f}x | {r_s / n * 1000:.2f} ms ({100 * r_s / a_s:.0f}%) |")
    if args.ig_tokens > 0:
        targets = attributed.positions[: args.ig_tokens].tolist()
        t = time.perf_counter()
        ia = input_attribution(lm, attributed, targets, n_steps=args.ig_steps)
        dt = time.perf_counter() - t
        print(f"input attribution: {len(targets)} tokens x {args.ig_steps} steps in {dt:.2f} s "
              f"({dt / len(targets) * 1000:.0f} ms per token); max completeness gap {float(ia.completeness_gap.max()):.2e}")
    print("markdown:", row)
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
