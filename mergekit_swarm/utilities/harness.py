"""`lm_eval`: lm-evaluation-harness tasks, run on the resident in-memory model.

The resident model (with its current particle's weights) is wrapped once in lm-eval's
`HFLM(pretrained=model, tokenizer=tokenizer)`; nothing is reloaded between evaluations.
Tasks come from lm-eval's registry or from local task YAMLs (`include_path`). Utility =
the mean of `metric` over `tasks`; each task's value goes to the history.

Needs the optional extra: `pip install 'mergekit-swarm[lm-eval]'`.

    utility:
      type: lm_eval
      tasks: [my_task]
      include_path: tasks/          # task YAMLs, e.g. dataset_path: json + data_files
      metric: acc,none
      limit: 200
      test_tasks: [my_task_test]    # optional, reported only
"""

from __future__ import annotations

import contextlib
import functools
import logging
from pathlib import Path
from typing import Any, Literal, cast

from pydantic import Field

from mergekit_swarm.core.errors import ConfigError, UtilityError
from mergekit_swarm.core.extras import require
from mergekit_swarm.core.protocols import CausalLM, Tokenizer
from mergekit_swarm.core.schema import RecipePath
from mergekit_swarm.utilities.base import Score, Split, Utility, UtilityConfig, register_utility

FEWSHOT_SEED = 1234  # lm-eval's default fewshot_random_seed


def _import_harness():
    require("lm_eval", "lm-eval", "the lm_eval utility", UtilityError, known_as="lm-evaluation-harness")
    from lm_eval import evaluator
    from lm_eval.models import huggingface

    # lm-eval's `@register_model` decorator is inferred to return `type[LM]`, which hides HFLM's own
    # signatures (`pretrained=`, `disable_tqdm=`, `.model`) from type checkers: typed as what it is at run time.
    HFLM = cast("type[Any]", huggingface.HFLM)

    class QuietHFLM(HFLM):
        """HFLM without its per-request progress bars (one evaluation = one particle)."""

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return evaluator, QuietHFLM


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: str | None):
    """Indexing lm-eval's task registry takes seconds: once per include path and run."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, verbosity="ERROR")


@contextlib.contextmanager
def _quiet_harness():
    """For one call, without lasting changes: no per-task progress bar while requests are built."""
    import lm_eval.api.task as task_module

    saved = task_module.tqdm
    task_module.tqdm = functools.partial(saved, disable=True)
    try:
        yield
    finally:
        task_module.tqdm = saved


class HarnessUtility(Utility):
    """Tasks are loaded once (datasets included); each evaluation runs lm-eval's `evaluate`
    on them, without simple_evaluate's per-call task loading, reseeding and environment probing."""

    def __init__(self, config: LmEvalConfig, tasks: list[str], limit: int | float | None):
        self.evaluator, self.HFLM = _import_harness()
        include = str(config.include_path) if config.include_path else None
        manager = _task_manager(include)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            where = f" (looked in lm-eval and {include})" if include else ""
            raise UtilityError(f"lm_eval: unknown task {unknown[0]!r}{where}")
        with _quiet_harness():
            self.loaded = manager.load(tasks)
        for task in self.loaded["tasks"].values():  # as simple_evaluate configures them
            if config.num_fewshot is not None and task.get_config("num_fewshot") != 0:
                task.set_config(key="num_fewshot", value=config.num_fewshot)
            elif task.get_config("num_fewshot") is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=FEWSHOT_SEED)
        self.config, self.tasks, self.limit = config, tasks, limit
        self._lm: Any = None  # one HFLM wrapper around the resident model

    def _wrap(self, model: CausalLM, tokenizer: Tokenizer):
        if self._lm is None or self._lm.model is not model:
            harness_logger = logging.getLogger("lm_eval")
            previous, harness_logger.level = harness_logger.level, logging.ERROR  # its "not a str" warning is expected
            try:
                self._lm = self.HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.config.batch_size)
            finally:
                harness_logger.setLevel(previous)
        return self._lm

    def __call__(self, model: CausalLM, tokenizer: Tokenizer) -> Score:
        with _quiet_harness():
            results = self.evaluator.evaluate(
                lm=self._wrap(model, tokenizer),
                task_dict=self.loaded,
                limit=self.limit,
                bootstrap_iters=0,
                log_samples=False,
                apply_chat_template=self.config.apply_chat_template,
                verbosity="ERROR",
            )["results"]
        values = {}
        for task in self.tasks:
            if self.config.metric not in results.get(task, {}):
                available = sorted(k for k in results.get(task, {}) if "," in k)
                raise ValueError(f"task {task!r} has no metric {self.config.metric!r} (it has {available})")
            values[task] = float(results[task][self.config.metric])
        return Score(sum(values.values()) / len(values), values)


@register_utility
class LmEvalConfig(UtilityConfig):
    type: Literal["lm_eval"] = "lm_eval"
    tasks: list[str] = Field(min_length=1, description="Task names (lm-eval's, or from include_path).")
    include_path: RecipePath | None = Field(default=None, description="Folder of local task YAMLs.")
    metric: str = Field(default="acc,none", description="Result key, metric and filter as lm-eval names it.")
    limit: int | float | None = Field(default=None, gt=0, description="Examples per task (or a share if < 1).")
    num_fewshot: int | None = Field(default=None, ge=0, description="Few-shot examples per prompt (default: the task's).")
    apply_chat_template: bool = Field(
        default=False, description="Wrap prompts in the tokenizer's chat template (lm-eval's option)."
    )
    batch_size: int = Field(default=8, ge=1, description="Requests per forward batch (HFLM's batch_size).")
    test_tasks: list[str] | None = Field(default=None, description="Tasks reported on the test side only.")
    test_limit: int | float | None = Field(default=None, gt=0, description="`limit` for test_tasks.")

    def build(self, split: Split, holdout: float = 0.0) -> Utility | None:
        if split not in ("dev", "test"):
            raise ConfigError(f"an lm_eval utility has no {split} part (swarm.holdout needs a utility of examples)")
        if split == "dev":
            return HarnessUtility(self, self.tasks, self.limit)
        return None if not self.test_tasks else HarnessUtility(self, self.test_tasks, self.test_limit)

    def input_files(self) -> list[Path]:
        if self.include_path is None or not self.include_path.is_dir():
            return []
        return sorted(p for p in self.include_path.rglob("*") if p.is_file())  # the task YAMLs, one by one

    def package_versions(self) -> dict[str, str]:
        """Tasks of lm-eval's own registry are defined by the installed lm-eval."""
        from importlib.metadata import PackageNotFoundError, version

        try:
            return {"lm_eval": version("lm_eval")}
        except PackageNotFoundError:
            return {}
