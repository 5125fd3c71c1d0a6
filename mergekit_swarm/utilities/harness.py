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
from typing import Literal

from pydantic import Field

from mergekit_swarm.config_base import RecipePath
from mergekit_swarm.errors import UtilityError
from mergekit_swarm.utilities.base import Score, Split, Utility, UtilityConfig, register_utility

INSTALL_HINT = "pip install 'mergekit-swarm[lm-eval]'"


def _import_harness():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as exc:
        raise UtilityError(f"the lm_eval utility needs lm-evaluation-harness ({exc}); install it with: {INSTALL_HINT}") from None

    class QuietHFLM(HFLM):
        """HFLM without its per-request progress bars (one evaluation = one particle)."""

        def loglikelihood(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood(requests, disable_tqdm=True)

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
            return super().loglikelihood_rolling(requests, disable_tqdm=True)

        def generate_until(self, requests, disable_tqdm: bool = False):
            return super().generate_until(requests, disable_tqdm=True)

    return lm_eval, QuietHFLM, TaskManager


@contextlib.contextmanager
def _quiet_harness():
    """For one call, without lasting changes: no per-task progress bar, and no `git describe`
    subprocess (lm-eval records the working directory's commit in every result)."""
    import lm_eval.api.task as task_module
    import lm_eval.evaluator as evaluator_module

    saved = task_module.tqdm, evaluator_module.get_git_commit_hash
    task_module.tqdm = functools.partial(saved[0], disable=True)
    evaluator_module.get_git_commit_hash = lambda: None
    try:
        yield
    finally:
        task_module.tqdm, evaluator_module.get_git_commit_hash = saved


class HarnessUtility(Utility):
    def __init__(self, config: LmEvalConfig, tasks: list[str], limit: int | float | None):
        self.lm_eval, self.HFLM, task_manager_class = _import_harness()
        include = str(config.include_path) if config.include_path else None
        self.task_manager = task_manager_class(include_path=include, verbosity="ERROR")
        unknown = [t for t in tasks if t not in self.task_manager.all_tasks]
        if unknown:
            where = f" (looked in lm-eval and {include})" if include else ""
            raise UtilityError(f"lm_eval: unknown task {unknown[0]!r}{where}")
        self.config, self.tasks, self.limit = config, tasks, limit
        self._lm = None  # one HFLM wrapper around the resident model

    def _wrap(self, model, tokenizer):
        if self._lm is None or self._lm.model is not model:
            harness_logger = logging.getLogger("lm_eval")
            previous, harness_logger.level = harness_logger.level, logging.ERROR  # its "not a str" warning is expected
            try:
                self._lm = self.HFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.config.batch_size)
            finally:
                harness_logger.setLevel(previous)
        return self._lm

    def __call__(self, model, tokenizer) -> Score:
        with _quiet_harness():
            results = self.lm_eval.simple_evaluate(
                model=self._wrap(model, tokenizer),
                tasks=self.tasks,
                task_manager=self.task_manager,
                num_fewshot=self.config.num_fewshot,
                limit=self.limit,
                apply_chat_template=self.config.apply_chat_template,
                bootstrap_iters=0,
                log_samples=False,
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
    include_path: RecipePath | None = Field(None, description="Folder of local task YAMLs.")
    metric: str = Field("acc,none", description="Result key, metric and filter as lm-eval names it.")
    limit: int | float | None = Field(None, gt=0, description="Examples per task (or a share if < 1).")
    num_fewshot: int | None = Field(None, ge=0)
    apply_chat_template: bool = Field(False)
    batch_size: int = Field(8, ge=1)
    test_tasks: list[str] | None = Field(None, description="Tasks reported on the test side only.")
    test_limit: int | float | None = Field(None, gt=0)

    def build(self, split: Split) -> Utility | None:
        if split == "dev":
            return HarnessUtility(self, self.tasks, self.limit)
        return None if not self.test_tasks else HarnessUtility(self, self.test_tasks, self.test_limit)

    def input_files(self) -> list[Path]:
        if self.include_path is None or not self.include_path.is_dir():
            return []
        return sorted(p for p in self.include_path.rglob("*") if p.is_file())
