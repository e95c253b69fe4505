"""`groundup serve FOLDER`: the OpenAI-compatible server (groundup.serve.app) under uvicorn."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..eval.run import load_model
from ..quant import quantize
from ..serve.engine import Engine


def add_serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="an OpenAI-compatible HTTP server (completions, chat, embeddings) with "
                       "continuous batching, a paged KV cache and many adapters in one batch")
    s.add_argument("model", help="an HF model folder or a .gguf file (decoder), or an encoder folder (embeddings)")
    s.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                   help="a peft LoRA or prompt-tuning folder served as MODEL:NAME (repeat for more)")
    s.add_argument("--name", default=None, help="the model's name in the API (default: the folder's name)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: localhost only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--api-key", default=os.environ.get("GROUNDUP_API_KEY"),
                   help="require Authorization: Bearer KEY (default: $GROUNDUP_API_KEY; none when unset)")
    s.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"])
    s.add_argument("--quantize", default=None, help="quantize the linear layers first (int8, int4, nf4, ...)")
    s.add_argument("--block-size", type=int, default=16, help="positions per KV cache block")
    s.add_argument("--kv-memory", type=float, default=1.0, help="GiB of memory for the KV cache")
    s.add_argument("--num-blocks", type=int, default=None, help="KV cache blocks (instead of --kv-memory)")
    s.add_argument("--max-seqs", type=int, default=64, help="sequences decoded together at most")
    s.add_argument("--max-step-tokens", type=int, default=512, help="tokens one step runs at most (prefill chunks)")
    s.add_argument("--no-prefix-caching", action="store_true", help="compute every prompt, shared or not")
    s.add_argument("--max-tokens", type=int, default=4096, help="the largest max_tokens a request may ask")
    s.add_argument("--max-requests", type=int, default=256, help="requests in flight at most (then 429)")
    s.add_argument("--max-request-bytes", type=int, default=1 << 20, help="request body size limit (then 413)")
    s.add_argument("--cascade", default=None, metavar="M1,M2,...", help="serve model 'cascade': these served "
                   "names (NAME or NAME:ADAPTER), cheapest first, each answer kept when its mean token logprob "
                   "reaches the stage's threshold (fit them with bench/cascade.py)")
    s.add_argument("--cascade-thresholds", default=None, metavar="T1,...", help="one threshold per stage but "
                   "the last")
    s.add_argument("--log-level", default="warning")
    s.set_defaults(func=main_serve)


def build_server(args: argparse.Namespace):
    """The Server for parsed ``serve`` arguments (everything checked before the model loads)."""
    from ..serve.app import Limits, Server  # imports starlette: the serve extra, needed by this command only

    adapters = {}
    for spec in args.adapter:
        name, sep, folder = spec.partition("=")
        if not sep or not name or not folder:
            raise SystemExit(f"--adapter {spec!r}: write NAME=DIR")
        if not Path(folder).is_dir():
            raise SystemExit(f"--adapter {spec!r}: {folder} is not a folder")
        adapters[name] = folder
    if not Path(args.model).exists():
        raise SystemExit(f"{args.model}: no such model folder or file")
    if not 0 < args.port < 65536:
        raise SystemExit(f"--port {args.port}: give a port in 1..65535")
    name = args.name or Path(args.model).name.removesuffix(".gguf")
    cascade = _cascade(args, name, adapters)

    model, tok, _ = load_model(args.model, args.dtype)
    limits = Limits(max_request_bytes=args.max_request_bytes, max_tokens=args.max_tokens,
                    max_requests=args.max_requests)
    if model.config.arch != "causal_lm":
        if adapters:
            raise SystemExit("--adapter: adapters are served on decoder models")
        return Server(model, tok, name=name, api_key=args.api_key, limits=limits)
    if args.quantize:

        model = quantize(model, args.quantize)

    engine = Engine(model, tok, block_size=args.block_size, n_blocks=args.num_blocks,
                    kv_bytes=int(args.kv_memory * (1 << 30)), max_seqs=args.max_seqs,
                    max_step_tokens=args.max_step_tokens,
                    prefix_caching=not args.no_prefix_caching, adapters=adapters, fault=_fault())
    return Server(model, tok, name=name, engine=engine, api_key=args.api_key, limits=limits, cascade=cascade)


def _cascade(args: argparse.Namespace, name: str, adapters: dict[str, str]) -> list[tuple[str, float]] | None:
    if not args.cascade:
        return None
    stages = [m.strip() for m in args.cascade.split(",") if m.strip()]
    try:
        thresholds = [float(t) for t in (args.cascade_thresholds or "").split(",") if t.strip()]
    except ValueError:
        raise SystemExit(f"--cascade-thresholds {args.cascade_thresholds!r}: give numbers, e.g. -0.3,-0.6") from None
    if len(stages) < 2 or len(thresholds) != len(stages) - 1:
        raise SystemExit(f"--cascade: {len(stages)} stages need {max(1, len(stages) - 1)} --cascade-thresholds "
                         "(and at least two stages)")
    for m in stages:
        base, _, adapter = m.partition(":")
        if base != name or (adapter and adapter not in adapters):
            raise SystemExit(f"--cascade: {m!r} is not served here (the model is {name!r}; adapters: "
                             f"{', '.join(adapters) or 'none'})")
    return list(zip(stages, [*thresholds, float("-inf")], strict=True))


def _fault():
    """Fault injection for the server's tests: GROUNDUP_SERVE_FAULT=ID,ID,... fails, inside its step, every
    sequence whose prompt starts with those token ids once it has produced a token (the others must go on)."""
    spec = os.environ.get("GROUNDUP_SERVE_FAULT")
    if not spec:
        return None
    bad = [int(t) for t in spec.split(",")]

    def fault(seq) -> None:
        if seq.prompt[: len(bad)] == bad and seq.output:
            raise RuntimeError(f"fault injected (GROUNDUP_SERVE_FAULT={spec})")

    return fault


def main_serve(args: argparse.Namespace) -> int:
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        raise SystemExit("groundup serve needs the server extra: pip install 'groundup[serve]'") from None
    server = build_server(args)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: serving on {args.host} without --api-key: anyone who reaches it can use it")
    print(f"serving {server.name} ({', '.join(server._names())}) on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(server.app, host=args.host, port=args.port, log_level=args.log_level)
    return 0
