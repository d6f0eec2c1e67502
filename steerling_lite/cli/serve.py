"""``steerling-lite serve``: an OpenAI-compatible HTTP server over one loaded model (see :mod:`steerling_lite.serve`)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from .argtypes import int_arg, non_negative_int, positive_int
from .common import add_model_args, load_model, model_dir, size_arg

API_KEY_ENV = "STEERLING_LITE_API_KEY"


def api_key_arg(text: str) -> str:
    """A type accepting an API key clients can send in ``Authorization: Bearer KEY``: printable
    ASCII without spaces (an empty key would leave the server open without saying so)."""
    if not text or not all("!" <= ch <= "~" for ch in text):
        raise argparse.ArgumentTypeError("expected a non-empty key of printable ASCII characters without spaces "
                                         "(it travels in an HTTP header)")
    return text


api_key_arg.__name__ = "API key"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve the OpenAI API (completions, chat, embeddings) with steering and attribution")
    add_model_args(p)
    g = p.add_argument_group("server")
    g.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    g.add_argument("--port", type=int_arg(0, 65535), default=8080, help="port (default 8080; 0 picks a free one)")
    g.add_argument("--api-key", type=api_key_arg, metavar="KEY",
                   help=f"require 'Authorization: Bearer KEY' on /v1 (default: ${API_KEY_ENV}; none: open)")
    g.add_argument("--served-model-name", metavar="NAME",
                   help="the model id clients use (default: the pulled model's name or the directory's name)")
    g.add_argument("--default-max-tokens", type=positive_int, default=128, metavar="N",
                   help="max_tokens of requests that give none (default 128)")
    g.add_argument("--max-tokens-limit", type=positive_int, metavar="N",
                   help="refuse requests asking for more than N tokens (default: only the context limits)")
    g.add_argument("--max-body-size", type=size_arg, default=1 << 20, metavar="SIZE",
                   help="largest request body (default 1MiB)")
    g.add_argument("--max-queue", type=non_negative_int, default=64, metavar="N",
                   help="requests that may wait behind the running one before the server answers 503 (default 64)")
    g.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"],
                   help="uvicorn's log level (default info: one line per request)")
    p.set_defaults(func=run)


def served_name(args: argparse.Namespace, path: Path) -> str:
    """``--served-model-name``, else the repo id a pulled model was named by, else the directory's name."""
    from ..loading.default_model import DEFAULT_MODEL_NAME

    if args.served_model_name:
        return args.served_model_name
    if not args.model:
        return DEFAULT_MODEL_NAME
    given = str(args.model)
    return given if not Path(given).expanduser().exists() else (path.name or given)


def run(args: argparse.Namespace) -> int:
    from ..serve import ServeSettings, create_app
    from ..serve.server import ServeError, bind, is_loopback, serve, url_of

    api_key = args.api_key
    if api_key is None and os.environ.get(API_KEY_ENV):  # set but empty: no key, as when unset
        try:
            api_key = api_key_arg(os.environ[API_KEY_ENV])
        except argparse.ArgumentTypeError as exc:
            raise ServeError(f"${API_KEY_ENV}: {exc}") from None
    path = model_dir(args)
    name = served_name(args, path)
    sock = bind(args.host, args.port)  # before loading: a taken port fails fast
    lm = load_model(args)
    aliases = tuple({str(args.model), str(path)} - {name}) if args.model else ()
    settings = ServeSettings(model_name=name, aliases=aliases, api_key=api_key,
                             max_body_bytes=args.max_body_size, default_max_tokens=args.default_max_tokens,
                             max_tokens_limit=args.max_tokens_limit, max_queue=args.max_queue)
    app = create_app(lm, settings)
    url = url_of(sock)
    if not is_loopback(args.host) and not settings.api_key:
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach this machine can use "
              "the model", file=sys.stderr)
    print(f"serving {name} at {url}/v1 (OpenAI API; GET {url}/health); ctrl+c stops", file=sys.stderr, flush=True)
    serve(app, sock, args.log_level)
    return 0
