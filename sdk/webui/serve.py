"""`sdk web-ui`: its checks (gradio installed, --auth's form, the port free) before the page is
built, then the page served until Ctrl-C."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from sdk.errors import SdkError
from sdk.registry import Registry

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def parse_auth(auth: str | None) -> tuple[str, str] | None:
    if auth is None:
        return None
    user, colon, password = auth.partition(":")
    if not colon or not user or not password:
        raise SdkError("--auth takes USER:PASS (a user name and a password, neither empty).")
    return user, password


def check_port(host: str, port: int) -> None:
    """An error naming --port when ``host:port`` is taken (gradio would try other ports)."""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as error:
            raise SdkError(f"--port {port} on {host} cannot be used ({error.strerror}); give "
                           "another --port.") from None


def exposed(host: str) -> bool:
    if host in LOOPBACK:
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return True


def launch(registry: Registry, output_dir: Path, host: str, port: int, share: bool,
           auth: tuple[str, str] | None, max_runs: int, group_flags: Sequence[str],
           block: bool = True) -> Any:
    """Build the page and serve it; returns the page (gradio Blocks: ``local_url``,
    ``close()``) when ``block`` is false (the tests serve it beside their browser)."""
    import gradio as gr

    from sdk.webui.app import build_app

    page = build_app(registry, output_dir, group_flags, max_runs)
    # the theme's fonts are the system's: the page fetches nothing from the internet
    theme = gr.themes.Default(font=["ui-sans-serif", "system-ui", "sans-serif"],
                              font_mono=["ui-monospace", "monospace"])
    page.queue().launch(server_name=host, server_port=port, share=share, auth=auth,
                        prevent_thread_lock=not block, theme=theme, quiet=not block,
                        footer_links=[], inbrowser=False)
    return page


def serve(registry: Registry, output_dir: Path, host: str, port: int, share: bool,
          auth: str | None, max_runs: int, group_flags: Sequence[str]) -> None:
    credentials = parse_auth(auth)
    check_port(host, port)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise SdkError("sdk web-ui needs gradio: pip install 'sft-sdk[webui]'.") from None
    if exposed(host) and credentials is None:
        click.echo(f"[sdk] warning: --host {host} serves the page to the network without a "
                   "password; add --auth USER:PASS.", err=True)
    if output_dir.exists() and not output_dir.is_dir():
        raise SdkError(f"--output-dir '{output_dir}' is a file; give a folder.")
    click.echo(f"[sdk] web UI on http://{host}:{port} (runs under {output_dir}); Ctrl-C stops "
               "it (a training run it started goes on).", err=True)
    launch(registry, output_dir, host, port, share, credentials, max_runs, group_flags)
