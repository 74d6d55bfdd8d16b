"""Shipping a model: export (merged Hugging Face directory, int8 check, GGUF) and serve (OpenAI API)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from affinage.cli import app


@app.command()
def export(
    source: Annotated[str, typer.Argument(help="A run directory, its final/, an adapter directory, or any model (alias, directory, .gguf, hub id).")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Directory to write (replaced atomically).")],
    base: Annotated[str | None, typer.Option(help="Base model of an adapter (default: the one the adapter or run names).")] = None,
    dtype: Annotated[str, typer.Option(help="Stored dtype: auto (the source's), float32, bfloat16, float16.")] = "auto",
    chat_template: Annotated[str | None, typer.Option(help="Set the chat template: a name (chatml...), a .jinja file or Jinja.")] = None,
    tolerance: Annotated[float | None, typer.Option(help="Largest logit difference accepted by the parity check (default by dtype).")] = None,
    int8: Annotated[bool, typer.Option("--int8", help="Measure int8 dynamic quantisation: quality delta and speed.")] = False,
    eval_text: Annotated[Path | None, typer.Option(help="Held-out text for --int8: .txt paragraphs or .jsonl rows.")] = None,
    int8_skip: Annotated[list[str] | None, typer.Option(help="Regex of layers --int8 keeps in fp32 (repeatable; default: lm_head).")] = None,
    gguf: Annotated[str | None, typer.Option(help="Also write a GGUF file: f16 or f32 (llama architecture).")] = None,
    gguf_pre: Annotated[str | None, typer.Option(help="llama.cpp pre-tokenizer name (default: recognised).")] = None,
) -> None:
    """Merge adapters and write a Hugging Face directory with a parity check; optionally int8 and GGUF."""
    from affinage.export import ExportOptions
    from affinage.export import export as run_export

    options = ExportOptions(
        base=base, dtype=dtype, chat_template=chat_template, tolerance=tolerance, int8=int8,
        eval_text=str(eval_text) if eval_text else None, gguf=gguf, gguf_pre=gguf_pre,
    )
    if int8_skip:
        options.int8_skip = [*options.int8_skip, *int8_skip]
    run_export(source, output, options)
    typer.echo(f"exported to {output} (manifest: {output / 'export_manifest.json'})")


@app.command()
def serve(
    model: Annotated[str, typer.Argument(help="Alias, local directory (e.g. an export), .gguf file, hub id or a run's final/.")],
    host: Annotated[str, typer.Option(help="Interface to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    served_model_name: Annotated[str | None, typer.Option(help="Name clients pass as 'model' (default: the directory name).")] = None,
    api_key: Annotated[list[str] | None, typer.Option(help="Accepted API key (repeatable; also AFFINAGE_API_KEYS=a,b).")] = None,
    api_keys_file: Annotated[Path | None, typer.Option(help="File of accepted API keys, one per line.")] = None,
    guard: Annotated[str, typer.Option(help="default (the safety guard, when installed), off, or a guard YAML config.")] = "default",
    max_batch_size: Annotated[int, typer.Option(help="Most answers decoded at once (concurrent generations).")] = 8,
    max_queue: Annotated[int, typer.Option(help="Most requests waiting; beyond, 429.")] = 32,
    max_tokens_limit: Annotated[int, typer.Option(help="Most tokens a request may ask for.")] = 1024,
    default_max_tokens: Annotated[int | None, typer.Option(help="max_tokens of a request that gives none (default: 256, at most the limit).")] = None,
    max_prompt_tokens: Annotated[int | None, typer.Option(help="Longest prompt accepted (default: the context length).")] = None,
    max_request_bytes: Annotated[int, typer.Option(help="Largest request body accepted.")] = 1_000_000,
    request_timeout: Annotated[float, typer.Option(help="Seconds before an unfinished request is cancelled (504).")] = 300.0,
    access_log: Annotated[Path | None, typer.Option(help="Also append JSON access-log lines to this file.")] = None,
    dtype: Annotated[str, typer.Option(help="auto, float32, bfloat16 or float16.")] = "auto",
    int8: Annotated[bool, typer.Option("--int8", help="Quantise linear layers to int8 at load (CPU).")] = False,
    int8_skip: Annotated[list[str] | None, typer.Option(help="Regex of layers --int8 keeps in fp32 (repeatable; lm_head always).")] = None,
    chat_template: Annotated[str | None, typer.Option(help="Named template or Jinja string for base models.")] = None,
) -> None:
    """Serve a model over HTTP with the OpenAI chat-completions API (needs the serve extra, which make setup installs)."""
    from affinage.errors import ConfigError
    from affinage.serving.server import ServeOptions, check_serve_dependencies
    from affinage.serving.server import serve as run_serve

    check_serve_dependencies()
    keys = list(api_key or [])
    if api_keys_file is not None:
        try:
            lines = api_keys_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"--api-keys-file {api_keys_file}: {exc}") from exc
        keys += [line.strip() for line in lines if line.strip() and not line.startswith("#")]
    options = ServeOptions(
        host=host, port=port, served_model_name=served_model_name, api_keys=keys, guard=guard,
        max_batch_size=max_batch_size, max_queue=max_queue, max_tokens_limit=max_tokens_limit,
        default_max_tokens=default_max_tokens, max_prompt_tokens=max_prompt_tokens,
        max_request_bytes=max_request_bytes, request_timeout_s=request_timeout,
        access_log=str(access_log) if access_log else None, dtype=dtype, int8=int8, chat_template=chat_template,
    )
    options.int8_skip += list(int8_skip or [])
    run_serve(model, options)
