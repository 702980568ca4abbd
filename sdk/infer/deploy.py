"""`sdk deploy`: serve a checkpoint, an export or a model type over an OpenAI-compatible HTTP
API (sdk/infer/openai_api.py) with uvicorn."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import signal
import socket
from pathlib import Path

import click

from sdk.config import DeployArguments
from sdk.errors import SdkError
from sdk.infer.chat import positions_taken
from sdk.infer.load import checkpoint_or_export, is_export, load_for_inference
from sdk.registry import Registry

SERVER_PACKAGES = ("fastapi", "uvicorn", "prometheus_client")
API_KEY_VARIABLE = "SFT_SDK_API_KEY"


def check_server_packages() -> None:
    missing = [name for name in SERVER_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise SdkError(f"sdk deploy needs {' and '.join(missing)}: pip install "
                       "'sft-sdk[deploy]'")


def served_model_name(args: DeployArguments) -> str:
    """--served-model-name, else the --ckpt-dir run's folder name (an export's own folder
    name), else the model type."""
    if args.served_model_name:
        return args.served_model_name
    if args.ckpt_dir:
        folder = checkpoint_or_export(args.ckpt_dir)
        return folder.name if is_export(folder) else Path(folder).parent.name
    if args.model_type:
        return args.model_type
    raise SdkError("Give --ckpt-dir (a checkpoint from `sdk sft`) or --model-type.")


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on ``host:port`` (port 0: any free one), taken before the model
    loads so that a port in use fails at once; connections wait in its queue until the server
    runs."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise SdkError(f"--host '{host}': {error}") from None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen()
    except OSError as error:
        sock.close()
        raise SdkError(f"Cannot listen on {host}:{port} ({error.strerror}); give another "
                       "--port, or --host.") from None
    return sock


def api_key(args: DeployArguments) -> str | None:
    """--api-key, else $SFT_SDK_API_KEY (kept out of the command line, where `ps` shows it to
    every user of the machine)."""
    return args.api_key or os.environ.get(API_KEY_VARIABLE) or None


def open_to_others(host: str) -> bool:
    """Whether ``host`` is reachable from other machines (not a loopback address)."""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: localhost, or a machine's name that others resolve
        return host != "localhost"


def run_deploy(args: DeployArguments, registry: Registry) -> None:
    check_server_packages()
    if args.num_beams > 1:
        raise SdkError("sdk deploy streams replies and beam search cannot: leave out "
                       "--num-beams.")
    name = served_model_name(args)
    key = api_key(args)
    if args.infer_backend == "vllm":
        from sdk.infer.vllm_backend import check_vllm

        check_vllm(args)
    sock = listening_socket(args.host, args.port)
    from transformers import set_seed

    from sdk.infer.openai_api import Served, Server

    set_seed(args.seed)
    if args.infer_backend == "vllm":
        from sdk.infer.vllm_serving import served_by_vllm

        served = served_by_vllm(args, registry, name)
    else:
        model, tokenizer, template = load_for_inference(args, registry)
        if positions_taken(model, 0):
            raise SdkError("sdk deploy generates replies together (continuous batching), which "
                           "does not take an adapter of virtual tokens (prefix, p-tuning, "
                           "prompt tuning) yet: ask it with `sdk infer`, or train a LoRA adapter "
                           "to serve.")
        served = Served(model, tokenizer, template, args, name, args.max_concurrency,
                        args.max_queue)
    host, port = sock.getsockname()[:2]
    if open_to_others(args.host) and key is None:
        click.echo(f"[sdk] --host {args.host} without --api-key: anyone who reaches port "
                   f"{port} can use the model; give --api-key (or ${API_KEY_VARIABLE}) on a "
                   "network you do not trust.", err=True)
    Server(served, api_key=key,
           cors_origins=args.cors_origins, ready=(
               f"[sdk] serving '{name}' at http://{host}:{port}/v1 (OpenAI API: /v1/models, "
               "/v1/chat/completions, /v1/completions; /health, /metrics"
               f"{'; API key required' if key else ''}); Ctrl-C stops")).run(sockets=[sock])
    # Stopped. Exiting with torch loaded takes seconds: a Ctrl-C meanwhile ends it at once, as
    # during the stop, not with a KeyboardInterrupt from wherever the exit has got to.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
