"""`swarm_history.png`: every evaluation's utility per iteration, and the global best."""

from __future__ import annotations

from pathlib import Path

from mergekit_swarm.core.errors import OutputError
from mergekit_swarm.core.storage import read_jsonl


def read_history(path: Path) -> list[dict]:
    return [record for _, record in read_jsonl(path, OutputError, dict, what="history")]


def plot_history(history: list[dict], best_expert: float | None, path: Path) -> None:
    """Scatter of particle utilities per iteration, the running global best as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [h for h in history if h["utility"] is not None and not h.get("skipped")]
    iterations = sorted({h["iteration"] for h in history})
    best, running = [], float("-inf")
    for it in iterations:
        running = max([running] + [h["utility"] for h in ok if h["iteration"] == it])
        best.append(running)

    fig, ax = plt.subplots(figsize=(7, 4), dpi=110)
    ax.scatter([h["iteration"] for h in ok], [h["utility"] for h in ok], s=10, alpha=0.45, color="tab:blue", label="particle")
    ax.plot(iterations, best, color="tab:red", linewidth=2, label="global best")
    if best_expert is not None:
        ax.axhline(best_expert, color="gray", linestyle="--", linewidth=1, label="best expert")
    failed = sum("error" in h for h in history)
    ax.set_xlabel("iteration")
    ax.set_ylabel("dev utility")
    ax.set_title("Model Swarms search" + (f" ({failed} failed evaluations)" if failed else ""))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
