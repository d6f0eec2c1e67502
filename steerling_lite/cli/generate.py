"""``steerling-lite generate``: generate text from a prompt; text to stdout, timings to stderr."""

from __future__ import annotations

import argparse
import json
import sys
import time

from ..errors import GenerationError
from ..generation.generate import GenerationConfig
from ..generation.prompt import build_prompt
from ..loading.config import load_config
from ..loading.tokenizer import ChatMessage
from .argtypes import float_arg, positive_int, seed_arg
from .common import add_model_args, load_model, model_dir, read_text_file
from .interrupt import EXIT_INTERRUPTED, interruptible
from .steering_args import add_steering_args, plan_from_args


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt")
    add_generation_args(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (text, token ids, timings) instead")
    p.set_defaults(func=run)


def add_generation_args(p: argparse.ArgumentParser) -> None:
    """The options of the commands that generate (``generate``, ``steer``, ``explain``): model,
    prompt, sampling and steering."""
    add_model_args(p)
    add_prompt_args(p)
    add_sampling_args(p)
    add_steering_args(p)


def add_prompt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--prompt", help="prompt text ('-' reads standard input)")
    g.add_argument("--prompt-file", metavar="FILE", help="read the prompt from FILE")
    p.add_argument("--chat", action=argparse.BooleanOptionalAction, default=None,
                   help="wrap the prompt as a user turn in the chat template (default: on for instruct models)")
    p.add_argument("--system", metavar="TEXT", help="system message (chat only)")


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", "-n", type=positive_int, default=128,
                   help="tokens to generate, a multiple of the model's diffusion block (64 for Steerling-8B); default 128")
    g.add_argument("--steps", type=positive_int, help="denoising steps (default: one per token); fewer is faster")
    g.add_argument("--temperature", type=float_arg(0.0),
                   help="0 = greedy (argmax); a value > 0 samples softmax(logits/T) with top-p. "
                        "Default: the reference's entropy-adaptive temperature")
    g.add_argument("--top-p", type=float_arg(0.0, 1.0, lo_open=True), default=0.8, help="nucleus mass (default 0.8)")
    g.add_argument("--repetition-penalty", type=float_arg(0.0, lo_open=True), default=1.1, help="default 1.1; 1 disables")
    g.add_argument("--seed", type=seed_arg, help="random seed (default: random, printed to stderr)")
    g.add_argument("--cfg-scale", type=float_arg(0.0), default=0.0, help="classifier-free guidance scale (default 0: off)")
    g.add_argument("--parallel-threshold", type=float_arg(0.0, 1.0), metavar="P",
                   help="parallel decoding: each step also commits every masked token with confidence >= P "
                        "(Fast-dLLM; e.g. 0.9). Off by default, so outputs match the reference")


def prompt_text(args: argparse.Namespace) -> str:
    """The prompt text of ``--prompt`` / ``--prompt-file`` (``-``: standard input).

    Raises:
        GenerationError: the prompt is empty (or white space only).
        InputError: ``--prompt-file`` is missing, a directory, unreadable or not UTF-8.
    """
    if args.prompt_file:
        text = read_text_file(args.prompt_file, "--prompt-file")
    elif args.prompt == "-":
        text = sys.stdin.read()
    else:
        text = args.prompt
    if not text.strip():
        raise GenerationError("the prompt is empty: pass some text with --prompt")
    return text


def generation_config(args: argparse.Namespace, stop_tokens: tuple[int, ...] = ()) -> GenerationConfig:
    """The :class:`GenerationConfig` of the sampling options (no ``--temperature``: entropy-adaptive)."""
    return GenerationConfig.from_settings(
        max_new_tokens=args.max_new_tokens,
        steps=args.steps,
        temperature=args.temperature,
        top_p=args.top_p,
        repetition_penalty=args.repetition_penalty,
        seed=args.seed,
        cfg_scale=args.cfg_scale,
        confidence_threshold=args.parallel_threshold,
        stop_tokens=stop_tokens,
    )


def prompt_ids(lm, args: argparse.Namespace, text: str) -> list[int]:
    """Token ids for ``text`` (with ``--system`` first; the chat template for instruct models
    unless ``--no-chat``)."""
    system = [ChatMessage("system", args.system)] if args.system else None
    return build_prompt(lm.tokenizer, text, messages=system, chat=args.chat)


def run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    # fail fast, before loading weights: settings and prompt need only config.json
    config = generation_config(args)
    model_config = load_config(model_dir(args))
    config.validate(model_config.diff_block_size)
    if args.chat and not model_config.instruct:
        raise GenerationError("--chat needs an instruct model; this one is a base model (config.json vocab_size "
                              f"{model_config.vocab_size} has no chat tokens): drop --chat")
    text = prompt_text(args)
    lm = load_model(args, quiet=args.json)
    ids = prompt_ids(lm, args, text)
    plan = plan_from_args(lm, args)
    printed = ""
    with interruptible() as stop:
        gen = stop.watch(lm.stream(ids, config, plan))
        for event in gen:
            if not args.json and lm.config.mask_token_id not in event.block_tokens:  # a block is complete
                text = lm.tokenizer.decode(gen.generated_ids(event.block_start + len(event.block_tokens)))
                sys.stdout.write(text[len(printed):])
                sys.stdout.flush()
                printed = text
    result = gen.result
    assert result is not None
    total = time.perf_counter() - t_start
    if args.json:
        print(json.dumps({
            "text": result.text, "token_ids": result.token_ids, "prompt_tokens": len(result.prompt_ids),
            "generated_tokens": len(result.token_ids), "steps": result.steps, "seed": result.seed,
            "stop_reason": result.stop_reason, "model": str(lm.path), "device": str(lm.device),
            "steering": plan.describe() if plan is not None else None,
            "dtype": str(lm.dtype).removeprefix("torch."),
            "timings": {
                "load_s": round(lm.load_stats.seconds, 4) if lm.load_stats else None,
                "generate_s": round(result.elapsed_s, 4), "first_token_s": round(result.first_commit_s, 4),
                "total_s": round(total, 4), "tokens_per_s": round(result.tokens_per_s, 2),
            },
        }))
        return exit_code(result.stop_reason)
    rest = result.text[len(printed):] if result.text.startswith(printed) else ""
    sys.stdout.write(rest + "\n")
    sys.stdout.flush()
    print(
        f"{result.committed_tokens} tokens in {result.elapsed_s:.2f} s ({result.tokens_per_s:.1f} tokens/s), "
        f"{result.steps} steps, first token after {result.first_commit_s * 1000:.0f} ms, seed {result.seed}, "
        f"stop: {result.stop_reason}",
        file=sys.stderr,
    )
    if result.stop_reason == "cancelled":
        print(f"cancelled (Ctrl-C) after {result.committed_tokens} of {config.max_new_tokens} tokens; "
              "the text above is what was committed", file=sys.stderr)
    return exit_code(result.stop_reason)


def exit_code(stop_reason: str) -> int:
    """0, or 130 for a generation cancelled by Ctrl-C."""
    return EXIT_INTERRUPTED if stop_reason == "cancelled" else 0
