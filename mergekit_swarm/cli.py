"""`mergekit-swarm`: run a Model Swarms recipe, or apply a recipe of found weights.

`mergekit-swarm swarm.yml out/` is short for `mergekit-swarm run swarm.yml out/`; every
mergekit merge option is accepted (`mergekit.options.add_merge_options`). The same
search also runs from stock `mergekit-yaml` (see `mergekit_swarm.mergekit_plugin`).

Each command imports what it runs inside its function, so `--help` and the `mergekit-yaml` hook
stay light (no torch, transformers or the search until a command needs them).
"""

from __future__ import annotations

import shlex
import sys

import click
from mergekit.options import MergeOptions, PrettyPrintHelp, add_merge_options

from mergekit_swarm import __version__
from mergekit_swarm.core.errors import SwarmError

# Options of a search run, as (declarations, click keyword arguments): the same list makes
# `mergekit-swarm run`'s options and, through the plugin, `mergekit-yaml`'s extra ones.
_PUSH = [
    (
        ("--push-to-hub",),
        {"metavar": "ORG/NAME", "default": None, "help": "After a successful run, push the output folder to this Hub repo."},
    ),
    (("--private",), {"is_flag": True, "help": "Create the Hub repo as private."}),
    (("--revision",), {"default": None, "help": "Push to this branch (created if needed) instead of main."}),
    (("--commit-message",), {"default": None, "help": "Commit message of the push."}),
    (("--include-state",), {"is_flag": True, "help": "Also push swarm_state.json, the resume state (left out by default)."}),
]
_SEARCH = [
    (("--resume",), {"is_flag": True, "help": "Continue an interrupted run of the same recipe (a finished one is kept)."}),
    (("--overwrite",), {"is_flag": True, "help": "Replace an existing output folder once the new run has finished."}),
    (("--fail-fast",), {"is_flag": True, "help": "Stop at the first failed utility evaluation instead of recording it."}),
    (("--merge-lora",), {"is_flag": True, "help": "LoRA experts: write the base model with the winner baked in."}),
    (
        ("--svd-rank",),
        {
            "type": click.IntRange(min=1),
            "default": None,
            "metavar": "R",
            "help": "LoRA experts: also write the winner compressed to rank R (truncated SVD per module) in OUT/svd-rank-R/, "
            "its dev/test utility beside the exact one's.",
        },
    ),
    (
        ("--allow-pickle",),
        {"is_flag": True, "help": "Read pickled checkpoints (torch.load, weights_only) and fetch them from the Hub."},
    ),
    (
        ("--backend",),
        {
            "type": click.Choice(["local", "ray"]),
            "default": None,
            "help": "Where particles are evaluated (overrides evaluation: backend): in this process, or on Ray workers.",
        },
    ),
    *_PUSH,
]
SWARM_FLAGS = [click.Option(list(decls), **kwargs) for decls, kwargs in _SEARCH]


def _option(name: str):
    """The search option `name` (declarations, keyword arguments), for commands that take only some."""
    return next(option for option in _SEARCH if name in option[0])


def _with(options):
    def decorate(command):
        for decls, kwargs in reversed(options):
            command = click.option(*decls, **kwargs)(command)
        return command

    return decorate


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
      mergekit-swarm swarm.yml out/             search, write the winner (same as `run`)
      mergekit-swarm run swarm.yml out/ --resume
      mergekit-swarm apply out/mergekit_config.yml again/
      mergekit-swarm compare swarm.yml board/   the swarm vs. merge baselines
    """


@main.command("run", cls=PrettyPrintHelp)
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path(file_okay=False))
@_with(_SEARCH)
@add_merge_options
def run(merge_options: MergeOptions, config_file: str, out_path: str, **flags) -> None:
    """Search with the swarm in CONFIG_FILE and write the winner to OUT_PATH.

    A `model_swarms` recipe without `swarm:`/`utility:` sections, but with weights, is a
    one-shot merge (see `apply`).
    """
    run_recipe_file(config_file, out_path, merge_options, **flags)


@main.command("apply", cls=PrettyPrintHelp)
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path(file_okay=False))
@_with([_option("--overwrite"), _option("--allow-pickle")])
@add_merge_options
def apply(merge_options: MergeOptions, config_file: str, out_path: str, overwrite: bool, allow_pickle: bool) -> None:
    """Write the merge of the weights in CONFIG_FILE (e.g. a winner's mergekit_config.yml).

    Works for LoRA adapters too, which stock mergekit can only bake into full models.
    """
    from mergekit_swarm.commands.apply import apply_recipe
    from mergekit_swarm.core.run_options import RunOptions

    merge_options.apply_global_options()
    options = RunOptions.from_merge_options(merge_options, overwrite=overwrite, allow_pickle=allow_pickle)
    _guard(lambda: apply_recipe(config_file, out_path, options))


def _names(value: str) -> tuple[str, ...]:
    """A comma-separated option value as a tuple ("" is an empty tuple)."""
    return tuple(v.strip().replace("-", "_") for v in value.split(",") if v.strip())


@main.command("compare", cls=PrettyPrintHelp)
@click.argument("config_file", type=click.Path(dir_okay=False))
@click.argument("out_path", type=click.Path(file_okay=False))
@click.option("--baselines", default=None, metavar="LIST", help="One-shot baselines to run (default: all). Comma-separated.")
@click.option(
    "--search",
    "search_baselines",
    default="",
    metavar="LIST",
    help="Budget-matched search baselines: random-search, lorahub, cma-es (or `all`). Default: none.",
)
@click.option("--budget", type=int, default=None, help="Evaluations per search baseline (default: what the swarm used).")
@click.option(
    "--granularities", default=None, metavar="LIST", help="Run the swarm at these granularities (default: the recipe's)."
)
@click.option("--seed", type=int, default=None, help="Seed of the swarm, the search baselines and DARE (default: swarm.seed).")
@click.option(
    "--long-swarm",
    type=int,
    default=None,
    metavar="K",
    help="Also run the swarm with K times its max_iterations and patience (a larger-budget row).",
)
@_with([_option("--overwrite"), _option("--allow-pickle")])
@add_merge_options
def compare(
    merge_options: MergeOptions,
    config_file: str,
    out_path: str,
    baselines: str | None,
    search_baselines: str,
    budget: int | None,
    granularities: str | None,
    seed: int | None,
    long_swarm: int | None,
    overwrite: bool,
    allow_pickle: bool,
) -> None:
    """Compare the swarm with model-composition baselines on the experts and utility of CONFIG_FILE.

    Writes a leaderboard (leaderboard.md/.json/.png, README.md) and a recipe per method to OUT_PATH.
    """
    from mergekit_swarm.commands.compare import BASELINES, SEARCH_BASELINES, CompareOptions, run_comparison
    from mergekit_swarm.config import load_recipe
    from mergekit_swarm.core.run_options import RunOptions, silence_library_progress_bars

    merge_options.apply_global_options()
    if merge_options.quiet:
        silence_library_progress_bars()
    options = RunOptions.from_merge_options(merge_options, overwrite=overwrite, allow_pickle=allow_pickle)

    def work():
        chosen = _names(search_baselines)
        settings = CompareOptions(
            baselines=BASELINES if baselines is None else _names(baselines),
            search=SEARCH_BASELINES if chosen == ("all",) else chosen,
            granularities=None if granularities is None else _names(granularities),
            budget=budget,
            seed=seed,
            long_swarm=long_swarm,
        )
        return run_comparison(load_recipe(config_file), out_path, options, settings)

    board = _guard(work, resumable=False)
    if not merge_options.quiet:
        click.echo(board.table())


@main.command("push")
@click.argument("folder", type=click.Path(exists=True, file_okay=False))
@click.argument("repo_id")
@_with(_PUSH[1:])
@click.option(  # push only: a run's fresh folder holds nothing else to add
    "--include",
    multiple=True,
    metavar="PATTERN",
    help="Also upload the files (or folders) matching PATTERN, relative to FOLDER; repeatable. Dotfiles only when named.",
)
def push(folder: str, repo_id: str, **options) -> None:
    """Push an output FOLDER of run, apply or compare to the Hub repo REPO_ID (created if needed).

    Only the files those commands write are uploaded (weights, configs, tokenizer, card, recipes,
    history, plots, results); swarm_state.json only with --include-state, anything else only with
    --include. The token comes from `hf auth login` or HF_TOKEN.
    """
    _push(folder, repo_id, options, quiet=False)


def run_recipe_file(
    config_file: str,
    out_path: str,
    merge_options: MergeOptions,
    *,
    resume: bool = False,
    overwrite: bool = False,
    fail_fast: bool = False,
    merge_lora: bool = False,
    svd_rank: int | None = None,
    allow_pickle: bool = False,
    backend: str | None = None,
    push_to_hub: str | None = None,
    **push_options,
) -> None:
    """The whole command: shared by `mergekit-swarm run` and the extended `mergekit-yaml`."""
    from mergekit_swarm.core.names import is_swarm_recipe
    from mergekit_swarm.core.run_options import RunOptions, silence_library_progress_bars, unused_options

    merge_options.apply_global_options()
    if merge_options.quiet:
        silence_library_progress_bars()
    else:
        for note in unused_options(merge_options):
            click.echo(f"note: {note}", err=True)
    options = RunOptions.from_merge_options(
        merge_options,
        resume=resume,
        overwrite=overwrite,
        fail_fast=fail_fast,
        merge_lora=merge_lora,
        svd_rank=svd_rank,
        allow_pickle=allow_pickle,
        backend=backend,
    )
    if push_to_hub:  # a wrong repo id or a missing token must not wait for the end of a long search
        from mergekit_swarm.hub import check_push_target

        _guard(lambda: check_push_target(push_to_hub))
    if not is_swarm_recipe(config_file):
        from mergekit_swarm.commands.apply import apply_recipe

        _guard(lambda: apply_recipe(config_file, out_path, options))
        if push_to_hub:
            _push(out_path, push_to_hub, push_options, quiet=merge_options.quiet)
        return

    def search():
        from mergekit_swarm.commands.run import run_swarm
        from mergekit_swarm.config import load_recipe

        return run_swarm(load_recipe(config_file), out_path, options)

    result = _guard(search)
    if not merge_options.quiet:
        click.echo(result.summary())
    if push_to_hub:
        _push(out_path, push_to_hub, push_options, quiet=merge_options.quiet)


def _push(folder: str, repo_id: str, options: dict, *, quiet: bool) -> None:
    from pathlib import Path

    from mergekit_swarm.hub import PushRequest, push

    url = _guard(lambda: push(PushRequest(Path(folder).resolve(), repo_id, **options)))
    if not quiet:
        click.echo(f"pushed {folder} to https://huggingface.co/{repo_id} ({url})")


def _guard(work, *, resumable: bool = True):
    """Run `work`; a SwarmError becomes one line and exit 1, Ctrl-C exit 130 (with a resume
    hint when the command can resume)."""
    try:
        return work()
    except SwarmError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        click.echo(f"\ninterrupted; continue with: {_resume_command()}" if resumable else "\ninterrupted", err=True)
        sys.exit(130)


def _resume_command() -> str:
    """The command the user ran, with --resume: same recipe, output and options."""
    args = sys.argv[1:]
    program = "mergekit-yaml" if sys.argv[0].endswith("mergekit-yaml") else "mergekit-swarm"
    return shlex.join([program, *args, *([] if "--resume" in args else ["--resume"])])
