"""Statistics of the quality table: paired bootstrap intervals of a test difference, and budget
curves averaged over cells.

A cell is one (testbed, pool, objective); its runs are the comparisons over the search seeds.
Two methods are compared on the same test examples: each resample draws the examples (per
component, for a multitask objective) with replacement, both methods' utilities are recomputed
on the draw (the mean over the seeds' runs), and the 2.5% and 97.5% quantiles of the difference
give the 95% interval.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

RESAMPLES = 2000
BOOTSTRAP_SEED = 0


def utility_of(recipe) -> Callable[[dict[str, float]], float]:
    """How per-component means make the utility: the mean itself, or the multitask aggregate."""
    from mergekit_swarm.utilities.multitask import aggregate

    utility = recipe.utility
    if utility.type != "multitask":
        return lambda means: means[""]
    names, weights = utility.names(), [c.weight for c in utility.components]
    return lambda means: aggregate([means[name] for name in names], weights, utility.aggregate)


def paired_interval(
    ours: Sequence[dict[str, Sequence[float]]],
    theirs: Sequence[dict[str, Sequence[float]]],
    combine: Callable[[dict[str, float]], float],
) -> tuple[float, float, float]:
    """(difference, low, high): ours − theirs on the test examples, each side the mean over its
    runs (one per search seed), with a paired bootstrap 95% interval."""
    keys = sorted(ours[0])
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    draws = {k: rng.integers(0, len(ours[0][k]), size=(RESAMPLES, len(ours[0][k]))) for k in keys}

    def side(runs: Sequence[dict[str, Sequence[float]]]) -> tuple[float, np.ndarray]:
        point, boot = [], []
        for run in runs:
            scores = {k: np.asarray(run[k], dtype=float) for k in keys}
            point.append(combine({k: float(scores[k].mean()) for k in keys}))
            means = {k: scores[k][draws[k]].mean(axis=1) for k in keys}
            boot.append(np.array([combine({k: float(means[k][b]) for k in keys}) for b in range(RESAMPLES)]))
        return float(np.mean(point)), np.mean(boot, axis=0)

    (a, boot_a), (b, boot_b) = side(ours), side(theirs)
    low, high = np.quantile(boot_a - boot_b, [0.025, 0.975])
    return a - b, float(low), float(high)


def verdict(low: float, high: float) -> str:
    """`win` / `loss` when the interval excludes 0 (ours better / worse), else `tie`."""
    return "win" if low > 0 else "loss" if high < 0 else "tie"


def curve_at(points: Sequence[dict], key: str, grid: Sequence[int]) -> list[float | None]:
    """A budget curve's `key` (dev, or test where measured) as a step function on `grid`, None
    before its first point and after its last (where the method stopped)."""
    measured = [p for p in points if p[key] is not None]
    values = []
    for e in grid:
        before = [p[key] for p in measured if p["evaluations"] <= e]
        values.append(before[-1] if before and e <= points[-1]["evaluations"] else None)
    return values


def plot_budget(curves: dict[str, list[tuple[list[dict], float, float]]], path) -> None:
    """Mean over cells of (dev so far, test of the incumbent) minus the best expert's, against
    dev evaluations, one line per method; `curves[title]` = [(curve, best expert dev, best expert test)]."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    end = max((p["evaluations"] for runs in curves.values() for curve, _, _ in runs for p in curve), default=1)
    grid = list(range(1, end + 1))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for title, runs in curves.items():
        for ax, key, index in ((axes[0], "dev", 1), (axes[1], "test", 2)):
            rows = [[None if v is None else v - run[index] for v in curve_at(run[0], key, grid)] for run in runs]
            mean = [
                np.mean([r[i] for r in rows if r[i] is not None]) if all(r[i] is not None for r in rows) else np.nan
                for i in range(len(grid))
            ]
            ax.plot(grid, mean, label=title, drawstyle="steps-post" if key == "dev" else "default")
    axes[0].set_title("best dev so far − best expert's dev (mean over cells)")
    axes[1].set_title("test of the incumbent − best expert's test (mean over cells)")
    for ax in axes:
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xlabel("dev evaluations")
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
