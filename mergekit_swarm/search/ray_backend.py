"""Particles evaluated on Ray: one resident model per actor, only coefficients travel.

Each `EvaluationWorker` actor resolves the recipe on its own node (local paths must be
readable there, Hub models come from that node's cache), checks that it sees the same
experts and objective files as the driver (the run's fingerprint), and keeps a resident
model for the whole run. Per evaluation the driver sends an `EvaluationTask` (the first
particle's index and the group's coefficient array, a few hundred bytes; with `swarm.racing`,
the group's limits, under `racing: confident` with graded scores its particles' personal bests'
scores on every dev example too) and gets back the `Evaluation`s (utility, seconds, error, details;
with racing, the examples scored, and for a stopped particle its per-example scores so far, which
go out again with the task that finishes it on any worker; under `confident` with graded scores,
a full evaluation's too, should it become a personal best).

Groups are the local evaluator's groups (`particles_per_batch` consecutive particles), so
every particle is scored in the same company as in process and results are identical; they
are handed to the search in particle order, whatever order workers finish in. A worker that
dies (crash, out of memory, lost node, `ray.kill`) is replaced and its group evaluated again,
at most `max_retries` times per group.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from collections import Counter, deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from mergekit_swarm.config import SwarmRecipe
from mergekit_swarm.config.evaluation import EvaluationSettings
from mergekit_swarm.core.console import printer
from mergekit_swarm.core.errors import ConfigError, SwarmError, WorkerError
from mergekit_swarm.core.extras import require
from mergekit_swarm.core.run_options import ModelAccess, RunOptions, silence_library_progress_bars
from mergekit_swarm.pso import Granularity
from mergekit_swarm.search.evaluator import Evaluation, LocalEvaluator, Racing
from mergekit_swarm.search.setup import SearchSetup, prepare
from mergekit_swarm.utilities import Split


@dataclass(frozen=True)
class EvaluationTask:
    """What travels to a worker per evaluation: particle ids and coefficients, never weights."""

    first: int  # index of the group's first particle in the evaluated list
    coefficients: np.ndarray  # (particles in the group, parameter groups, experts)
    split: Split
    racing: Racing | None = None  # `swarm.racing`: the slices and this group's limits
    stopped: tuple[Evaluation, ...] | None = None  # to finish: the group's stopped evaluations (their scores so far)


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs to build its resident model (sent once, when it starts)."""

    recipe: SwarmRecipe  # as written: Hub models are resolved on the worker's node
    options: ModelAccess  # the driver's, on the worker's device
    granularity: Granularity
    slots: int
    fewer_slots: bool  # `particles_per_batch: auto`: the worker's device and PEFT may lower it
    fingerprint: str  # the driver's: a worker that sees other files refuses to start
    threads: int


class EvaluationWorker:
    """A Ray actor holding one resident model; `start` builds it, `evaluate` scores tasks."""

    def __init__(self):
        self._evaluator: LocalEvaluator | None = None
        self._failure: BaseException | None = None

    def start(self, spec: WorkerSpec) -> dict:
        """Resolve the recipe here, check it is the driver's, load the resident model."""
        import torch

        try:
            torch.set_num_threads(spec.threads)
            silence_library_progress_bars()  # the driver's progress bar is the one to read
            options = spec.options
            recipe = spec.recipe.resolve(options)
            if recipe.fingerprint() != spec.fingerprint:
                raise WorkerError(
                    "it sees other experts, base model or utility files than the driver "
                    "(every node needs the same files at the same paths, or the same Hub revisions)"
                )
            setup = prepare(recipe, options, spec.granularity)
            self._evaluator = LocalEvaluator.open(setup, options, spec.slots, fewer_slots=spec.fewer_slots)
        except (SwarmError, OSError) as exc:  # a node without the files, most often: say which node
            kind = type(exc) if isinstance(exc, SwarmError) else WorkerError
            self._failure = kind(f"Ray worker on {_node()}: {exc}")
            raise self._failure from None
        except BaseException as exc:
            self._failure = exc  # evaluate() raises it too: tasks queued behind a failed start fail with the cause
            raise
        return {"node": _node(), "pid": os.getpid(), "device": options.device, "splits": list(self._evaluator.splits)}

    def evaluate(self, task: EvaluationTask) -> list[Evaluation]:
        if self._evaluator is None:
            raise self._failure or WorkerError("the Ray worker was not started")
        particles = list(task.coefficients)
        if task.stopped is not None:  # (on any worker: the scores so far travel with the task)
            return self._evaluator.finish(particles, task.stopped, task.split, task.racing)
        return list(self._evaluator.evaluate(particles, task.split, task.racing))


class RayEvaluator:
    """Spreads every iteration's particle groups over Ray workers; results come back in order."""

    def __init__(
        self, recipe: SwarmRecipe, setup: SearchSetup, options: RunOptions, settings: EvaluationSettings, *, particles: int
    ):
        """`particles` per iteration: the groups they form bound the workers that can be kept busy."""
        self._ray = require("ray", "ray", "evaluation: backend: ray")
        self.settings, self.quiet = settings, options.quiet
        self._say = printer(options.quiet)
        self.replacements = 0
        self._racing: dict[Split, Racing] = {}  # per split, the racing of its last raced evaluation (to finish)
        self.workers: list = []
        self._started_ray = False
        gpus = settings.gpus_per_worker
        if gpus is None:
            gpus = 1.0 if options.device.startswith("cuda") else 0.0
        if options.device.startswith("cuda") and gpus == 0:
            raise ConfigError("evaluation: with --device cuda every Ray worker needs a GPU share (gpus_per_worker > 0)")
        self._resources = {"num_cpus": settings.cpus_per_worker, "num_gpus": gpus}
        self._actor_class = self._ray.remote(EvaluationWorker).options(**self._resources, max_restarts=0)  # we replace
        # Ray makes a worker's GPU(s) its `cuda:0`: any --device cuda:N means "this worker's GPU"
        device = "cuda" if options.device.startswith("cuda") else options.device
        auto = settings.particles_per_batch == "auto"
        slots = setup.slots(settings.particles_per_batch, particles)
        try:
            self._connect()
            total = self._ray.cluster_resources()
            count = self._worker_count(total, max_workers=particles if auto else -(-particles // slots))
            if auto:  # every worker scores its share of an iteration in one batch
                slots = min(slots, -(-particles // count))
            self._spec = WorkerSpec(
                recipe,
                ModelAccess.of(options, device=device),
                setup.layout.granularity,
                slots,
                auto,
                setup.recipe.fingerprint(),
                max(1, int(settings.cpus_per_worker)),
            )
            self._say(
                f"Ray: starting {count} worker(s) with {settings.cpus_per_worker:g} CPU and {gpus:g} GPU each "
                f"(resources of the cluster: {total.get('CPU', 0):g} CPU, {total.get('GPU', 0):g} GPU, "
                f"{len(self._ray.nodes())} node(s))"
            )
            starts = [self._spawn() for _ in range(count)]
            self.workers = [worker for worker, _ in starts]
            self.nodes = [self._wait_started(ref) for _, ref in starts]
            self.splits = tuple(self.nodes[0]["splits"])
        except BaseException:
            self.close()
            raise

    # -- the cluster ---------------------------------------------------------------------------
    def _connect(self) -> None:
        if not self._ray.is_initialized():  # else: the caller's cluster, which it also shuts down
            try:
                self._ray.init(address=self.settings.address, logging_level=logging.WARNING, log_to_driver=not self.quiet)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                where = self.settings.address or os.environ.get("RAY_ADDRESS") or "a new local cluster"
                raise ConfigError(f"evaluation: address: cannot start or join the Ray cluster ({where}): {exc}") from None
            self._started_ray = True

    def _worker_count(self, total: dict[str, float], *, max_workers: int) -> int:
        """Workers asked for, or as many as the cluster's `total` resources fit (at most `max_workers`)."""
        fits = math.inf
        for key, ray_key in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
            need, have = self._resources[key], total.get(ray_key, 0.0)
            if need > have:  # Ray would wait forever for such a worker
                raise ConfigError(
                    f"evaluation: a worker needs {need:g} {ray_key}, and the Ray cluster has {have:g} "
                    f"(set {key[4:]}_per_worker: lower{', or 0 to evaluate on CPUs' if ray_key == 'GPU' else ''})"
                )
            if need > 0:
                fits = min(fits, int(have // need))
        wanted = self.settings.workers or min(fits, max_workers)
        if wanted > fits:
            self._say(f"note: evaluation: workers is {wanted}, but the Ray cluster fits {fits}; starting {fits}")
        return int(min(wanted, fits))

    def _spawn(self):
        """A new actor and the reference of its start (not waited for)."""
        worker = self._actor_class.remote()
        return worker, worker.start.remote(self._spec)

    def _wait_started(self, start_ref) -> dict:
        try:
            return self._ray.get(start_ref)
        except self._ray.exceptions.RayTaskError as exc:
            raise _user_error(exc) from None
        except self._ray.exceptions.RayError as exc:
            raise WorkerError(f"a Ray worker died while loading the models: {_first_line(exc)}") from None

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(
        self, particles: Sequence[np.ndarray], split: Split = "dev", racing: Racing | None = None
    ) -> Iterator[Evaluation]:
        """Groups go to idle workers as they free up; evaluations are yielded in particle order.
        With `racing`, each group races on its worker as it would in process (its particles' limits go with it)."""
        if racing is not None:  # its slices and z, to finish stopped particles later on whichever worker
            self._racing[split] = Racing(racing.slices, [], racing.z)
        yield from self._run(self._tasks(particles, split, racing))

    def finish(self, particles: Sequence[np.ndarray], stopped: Sequence[Evaluation], split: Split = "dev") -> list[Evaluation]:
        """The particles racing stopped, scored on the rest of dev on the workers, from their scores so far."""
        racing = self._racing.get(split)
        if racing is None or any(e.partial is None for e in stopped):
            raise ValueError("finish() takes evaluations that racing stopped, of this evaluator")
        return list(self._run(self._tasks(particles, split, racing, stopped)))

    def _tasks(
        self, particles: Sequence[np.ndarray], split: Split, racing: Racing | None, stopped: Sequence[Evaluation] | None = None
    ) -> list[EvaluationTask]:
        """The local evaluator's groups (`slots` consecutive particles), so each particle is scored in the
        same company as in process; each with its share of `racing`'s limits, or of the `stopped` to finish."""
        slots, tasks = self._spec.slots, []
        for start in range(0, len(particles), slots):
            end = min(start + slots, len(particles))
            if stopped is not None:
                share, to_finish = racing, tuple(stopped[start:end])
            else:
                share = None if racing is None else Racing(racing.slices, list(racing.limits[start:end]), racing.z)
                to_finish = None
            tasks.append(EvaluationTask(start, np.stack(particles[start:end]), split, share, to_finish))
        return tasks

    def _run(self, tasks: list[EvaluationTask]) -> Iterator[Evaluation]:
        """The tasks' evaluations, in task order, whichever worker takes each (a dead one replaced)."""
        waiting, idle = deque(range(len(tasks))), deque(range(len(self.workers)))
        running: dict = {}  # object ref -> (worker index, task index)
        finished: dict[int, list[Evaluation]] = {}
        deaths: Counter[int] = Counter()
        lost = self._lost_worker_errors()
        next_task = 0
        while next_task < len(tasks):
            while waiting and idle:
                worker, task = idle.popleft(), waiting.popleft()
                running[self._submit(worker, tasks[task])] = (worker, task)
            (ref,), _ = self._ray.wait(list(running), num_returns=1)
            worker, task = running.pop(ref)
            try:
                finished[task] = self._ray.get(ref)
            except self._ray.exceptions.RayTaskError as exc:  # raised by our code on the worker, not a death
                raise _user_error(exc) from None
            except lost as exc:
                deaths[task] += 1
                if deaths[task] > self.settings.max_retries:
                    raise WorkerError(
                        f"Ray workers died {deaths[task]} times evaluating particles {tasks[task].first}.."
                        f"{tasks[task].first + len(tasks[task].coefficients) - 1} (max_retries: {self.settings.max_retries}); "
                        f"last: {_first_line(exc)}"
                    ) from None
                self._replace(worker, exc)
                waiting.appendleft(task)
            idle.append(worker)
            while next_task in finished:
                yield from finished.pop(next_task)
                next_task += 1

    def _submit(self, worker: int, task: EvaluationTask):
        return self.workers[worker].evaluate.remote(task)

    def _replace(self, index: int, cause: Exception) -> None:
        self._ray.kill(self.workers[index], no_restart=True)  # if it is only unreachable, it must not come back
        self.workers[index], _ = self._spawn()  # a failed start surfaces through its first task
        self.replacements += 1
        self._say(f"Ray worker {index} died ({_first_line(cause)}); replaced, its particles are evaluated again")

    def _lost_worker_errors(self) -> tuple[type[Exception], ...]:
        errors = self._ray.exceptions
        return (
            errors.RayActorError,  # the actor process exited or was killed (ray.kill, OOM killer)
            errors.WorkerCrashedError,
            errors.NodeDiedError,
            errors.ObjectLostError,
            errors.OutOfMemoryError,  # Ray's memory monitor
        )

    def resident_model(self) -> None:
        return None  # the models live on the workers

    def close(self) -> None:
        """Kill the workers; stop the cluster if this run started it. Safe to call twice."""
        for worker in self.workers:
            with contextlib.suppress(Exception):  # already gone, or the cluster is
                self._ray.kill(worker, no_restart=True)
        self.workers = []
        if self._started_ray:
            self._ray.shutdown()
            self._started_ray = False


def _user_error(exc) -> Exception:
    """The error a worker's code raised: ours as they are (one line), others named briefly."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, SwarmError):
        return cause
    return WorkerError(f"a Ray worker failed: {_first_line(cause or exc)}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"[:300]


def _node() -> str:
    import socket

    return socket.gethostname()
