"""`mergekit-swarm`: run a Model Swarms recipe.

`mergekit-swarm swarm.yml out/` is short for `mergekit-swarm run swarm.yml out/`; every
mergekit merge option is accepted (`mergekit.options.add_merge_options`).
"""

from __future__ import annotations

import shlex
import sys

import click
from mergekit.options import MergeOptions, PrettyPrintHelp, add_merge_options

from mergekit_swarm import __version__
from mergekit_swarm.errors import SwarmError


class DefaultCommandGroup(click.Group):
    """A group whose first argument may be a recipe file instead of a command name."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@click.group(cls=DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mergekit-swarm")
def main() -> None:
    """Adapt a pool of LLM experts to your objective with Model Swarms.

    \b
      mergekit-swarm swarm.yml out/            run a recipe (same as `run`)
      mergekit-swarm run swarm.yml out/ --resume
    """


@main.command("run", cls=PrettyPrintHelp)
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path(file_okay=False))
@click.option("--resume", is_flag=True, help="Continue an interrupted run of the same recipe (a finished one is kept).")
@click.option("--overwrite", is_flag=True, help="Replace an existing output folder once the new run has finished.")
@click.option("--fail-fast", is_flag=True, help="Stop at the first failed utility evaluation instead of recording it.")
@click.option("--merge-lora", is_flag=True, help="LoRA experts: write the base model with the winner baked in.")
@add_merge_options
def run(
    merge_options: MergeOptions,
    config_file: str,
    out_path: str,
    resume: bool,
    overwrite: bool,
    fail_fast: bool,
    merge_lora: bool,
) -> None:
    """Search with the swarm in CONFIG_FILE and write the winner to OUT_PATH."""
    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.run import RunOptions, run_swarm

    merge_options.apply_global_options()
    if merge_options.quiet:
        _silence_library_progress_bars()
    try:
        recipe = load_recipe(config_file)
        options = RunOptions.from_merge_options(
            merge_options, resume=resume, overwrite=overwrite, fail_fast=fail_fast, merge_lora=merge_lora
        )
        result = run_swarm(recipe, out_path, options)
    except SwarmError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; continue with: {_resume_command()}", err=True)
        sys.exit(130)
    if not merge_options.quiet:
        click.echo(result.summary())


def _silence_library_progress_bars() -> None:
    """--quiet also covers the loading bars of transformers and huggingface_hub."""
    from huggingface_hub.utils import disable_progress_bars
    from transformers.utils import logging as transformers_logging

    disable_progress_bars()
    transformers_logging.disable_progress_bar()


def _resume_command() -> str:
    """The command the user ran, with --resume: same recipe, output and options."""
    args = sys.argv[1:]
    return shlex.join(["mergekit-swarm", *args, *([] if "--resume" in args else ["--resume"])])
