"""The ``affinage`` command line: one verb per stage.

Heavy imports (torch, transformers) happen inside the verbs, so ``affinage --help`` is instant.
Errors the user can fix (:class:`~affinage.errors.AffinageError`) are printed as one clear message
without a stack trace, and the process exits with status 2.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from affinage import __version__
from affinage.errors import AffinageError

app = typer.Typer(
    name="affinage",
    help="Post-train causal language models: fine-tune, align, check and serve them.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

OverridesArg = Annotated[
    list[str] | None, typer.Argument(help="Config overrides as dotted key=value, e.g. train.lr=1e-4 run.output_dir=runs/x")
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"affinage {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """affinage: data -> SFT -> preferences -> RL -> safety -> evaluation -> serving."""


# Each area registers its verbs on ``app`` in its own module, so adding a stage touches one line here.
COMMAND_MODULES = [
    "affinage.commands.train",
    "affinage.commands.data",
    "affinage.commands.generate",
    "affinage.commands.serve",
    "affinage.commands.evaluate",
    "affinage.commands.preference",
    "affinage.commands.rl",
    "affinage.commands.safety",
    "affinage.commands.plan",
]


def _register_commands() -> None:
    import importlib

    for module in COMMAND_MODULES:
        importlib.import_module(module)


def main() -> None:
    _register_commands()
    try:
        app()
    except AffinageError as exc:
        from rich.console import Console

        Console(stderr=True).print(f"[bold red]error:[/] {exc}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
