"""The quality tables' rows and summary, shared by `quality.py` (the testbed) and `real_quality.py` (a real LLM):
the default swarm's paired test difference to every method, mean and std over the search seeds, budget curves,
the summary per method over all cells, and the formatting of a cell."""

from __future__ import annotations

import statistics

from lib.quality_stats import paired_interval, verdict

SWARM = "swarm_model"  # the default swarm: the row every other method is compared with
LONG_SWARM = 3  # the larger-budget swarm row: 3x max_iterations and patience


def differences(examples: list[dict], combine) -> dict[str, dict]:
    """Per method: the default swarm's test minus the method's, with its paired 95% interval and verdict."""
    ours = [run[SWARM] for run in examples if SWARM in run]
    found = {}
    for method in dict.fromkeys(m for run in examples for m in run):
        if method == SWARM or not ours:
            continue
        theirs = [run[method] for run in examples if method in run]
        # a deterministic method ran once: the same run stands for every seed
        theirs = theirs * len(ours) if len(theirs) == 1 else theirs
        diff, low, high = paired_interval(ours, theirs, combine)
        found[method] = {"difference": diff, "low": low, "high": high, "verdict": verdict(low, high)}
    return found


def budget_curves(runs: list[dict]) -> dict[str, list[tuple[list[dict], float, float]]]:
    """Budget curves of every run with one, with its cell's best expert (dev, test)."""
    best = {(r["testbed"], r["pool"], r["objective"]): (r["dev"], r["test"]) for r in runs if r["method"] == "best_expert"}
    curves: dict[str, list] = {}
    for r in runs:
        key = (r["testbed"], r["pool"], r["objective"])
        if r["curve"] and key in best and None not in best[key]:
            last = {"evaluations": r["evaluations"], "dev": r["curve"][-1]["dev"], "test": None}  # to where it stopped
            curves.setdefault(r["title"], []).append(([*r["curve"], last], *best[key]))
    return curves


def aggregate(runs: list[dict]) -> list[dict]:
    """Mean and std over the search seeds per (testbed, pool, objective, method)."""
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["testbed"], run["pool"], run["objective"], run["method"]), []).append(run)
    rows = []
    for (testbed_seed, pool, objective, method), items in groups.items():
        row = {
            "testbed": testbed_seed,
            "pool": pool,
            "objective": objective,
            "method": method,
            "title": items[0]["title"],
            "runs": len(items),
        }
        for key in ("dev", "test"):
            values = [r[key] for r in items if r[key] is not None]
            row[key] = statistics.mean(values) if values else None
            row[f"{key}_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        row["evaluations"] = statistics.mean(r["evaluations"] for r in items)
        row["seconds"] = statistics.mean(r["seconds"] for r in items)
        row["note"] = items[0]["note"]
        row["emergence"] = items[0]["emergence"]  # the first seed's
        rows.append(row)
    return rows


def summary(rows: list[dict], cells: dict[tuple, dict]) -> list[str]:
    """The default swarm against each method over every cell, and its gain over the best expert."""
    by_cell = {}
    for r in rows:
        by_cell.setdefault(cell_key(r), {})[r["method"]] = r
    gains = [
        c[SWARM]["test"] - c["best_expert"]["test"]
        for c in by_cell.values()
        if SWARM in c and "best_expert" in c and None not in (c[SWARM]["test"], c["best_expert"]["test"])
    ]

    def lost(found: dict, baselines_only: bool) -> bool:  # the swarm's own rows (3x budget) are not baselines
        return any(f["verdict"] == "loss" for m, f in found.items() if not (baselines_only and m.startswith("swarm")))

    losses = [key for key, found in cells.items() if lost(found, baselines_only=True)]
    any_row = sum(lost(found, baselines_only=False) for found in cells.values())
    lines = [
        "## Summary",
        "",
        f"Default swarm: mean test gain over the best expert **{statistics.mean(gains):+.3f}** over {len(gains)} cells; "
        f"significantly worse than at least one baseline in **{len(losses)}** of {len(cells)} cells"
        + (": " + ", ".join("/".join(map(str, k)) for k in losses) if losses else "")
        + f" ({any_row} cells counting the swarm's own {LONG_SWARM}x-iterations row too).",
        "",
        "| method | cells | mean dev rank | mean test | swarm − method, mean | swarm vs method: wins / ties / losses |",
        "|---|---:|---:|---:|---:|---|",
    ]
    ranks: dict[str, list[int]] = {}
    for c in by_cell.values():
        ranked = sorted((r for r in c.values() if r["dev"] is not None), key=lambda r: -r["dev"])
        for rank, r in enumerate(ranked, start=1):
            ranks.setdefault(r["method"], []).append(rank)
    methods = sorted(ranks, key=lambda m: statistics.mean(ranks[m]))
    for method in methods:
        items = [c[method] for c in by_cell.values() if method in c]
        tests = [r["test"] for r in items if r["test"] is not None]
        found = [cells[k][method] for k in cells if method in cells[k]]
        counts = [sum(f["verdict"] == v for f in found) for v in ("win", "tie", "loss")]
        diff = f"{statistics.mean(f['difference'] for f in found):+.3f}" if found else "-"
        tally = " / ".join(map(str, counts)) if found else "-"
        lines.append(
            f"| {items[0]['title']} | {len(items)} | {statistics.mean(ranks[method]):.1f} | "
            f"{statistics.mean(tests) if tests else float('nan'):.3f} | {diff} | {tally} |"
        )
    return lines


def cell_key(row: dict) -> tuple:
    return row["testbed"], row["pool"], row["objective"]


def format_value(row: dict, key: str) -> str:
    if row[key] is None:
        return "-"
    return f"{row[key]:.3f} ± {row[f'{key}_std']:.3f}" if row["runs"] > 1 else f"{row[key]:.3f}"


def format_difference(found: dict | None) -> str:
    if not found:
        return "-"
    mark = {"win": " **win**", "loss": " **loss**", "tie": ""}[found["verdict"]]
    return f"{found['difference']:+.3f} [{found['low']:+.3f}, {found['high']:+.3f}]{mark}"
