"""Loss curves and metrics against images seen, of one or several runs, in one PNG (launch/plot.py):
for users without W&B, read from each run's metrics.jsonl."""

from __future__ import annotations

import math
from pathlib import Path

from gen_dist.errors import UserError
from gen_dist.tracking import METRICS_FILE, read_metrics

# evaluation metrics drawn when a run has them, in this order (lower is better for all but precision/recall)
EVAL_METRICS = ("fid", "kid", "precision", "recall", "test/loss", "test/mse", "test/kl", "coverage/classes_covered")


def _series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    pts = [(r["images_seen"], r[key]) for r in rows
           if isinstance(r.get(key), (int, float)) and isinstance(r.get("images_seen"), (int, float))]
    return [x for x, _ in pts], [y for _, y in pts]


def load_runs(run_dirs: list[str]) -> dict[str, list[dict]]:
    runs = {}
    for d in run_dirs:
        path = Path(d)
        rows = read_metrics(path)
        if not rows:
            raise UserError(f"{path / METRICS_FILE} is missing or empty: give a run folder (run.dir) that has trained")
        name = path.name if path.name not in runs else str(path)
        runs[name] = rows
    return runs


def panels(runs: dict[str, list[dict]], metrics: list[str] | None) -> list[str]:
    """Every logged loss (loss/*), then the evaluation metrics any run has (or the ones asked for)."""
    keys = set().union(*(row.keys() for rows in runs.values() for row in rows))
    if metrics:
        missing = [m for m in metrics if m not in keys]
        if missing:
            raise UserError(f"no run logged {', '.join(missing)}: choose among {', '.join(sorted(k for k in keys if '/' in k or k in EVAL_METRICS))}")
        return list(metrics)
    return sorted(k for k in keys if k.startswith("loss/")) + [k for k in EVAL_METRICS if k in keys]


def plot_runs(run_dirs: list[str], out: str | Path, metrics: list[str] | None = None) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on compute nodes
    import matplotlib.pyplot as plt

    runs = load_runs(run_dirs)
    names = panels(runs, metrics)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    from matplotlib.lines import Line2D
    from matplotlib.ticker import EngFormatter

    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colour = {run: colours[i % len(colours)] for i, run in enumerate(runs)}  # one colour per run everywhere
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows + 0.4), squeeze=False)
    for ax, key in zip(axes.flat, names):
        for run, data in runs.items():
            x, y = _series(data, key)
            if x:
                ax.plot(x, y, color=colour[run], marker="o" if len(x) < 30 else None, markersize=3)
        ax.set_title(key)
        ax.set_xlabel("images seen")
        ax.xaxis.set_major_formatter(EngFormatter())  # 120k, not 120000
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    handles = [Line2D([], [], color=colour[r], label=r) for r in runs]
    fig.legend(handles=handles, loc="upper center", ncol=min(4, len(runs)), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig.get_figheight()))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
