"""Metric curves over training steps, one PNG per metric, with the base (no adapter) as a dashed line."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_path


def plot_curves(steps: dict[str, int], values: dict[str, dict[str, float | None]], base: dict[str, float | None],
                out_dir: Path) -> dict[str, Path]:  # fmt: skip
    """Write ``out_dir/<metric>.png`` for each metric measured on at least one checkpoint.

    ``steps`` maps checkpoint label -> step; ``values[metric][label]`` is the value (``None``: not
    measured); ``base[metric]`` the no-adapter value. Returns metric -> PNG path.
    """
    import matplotlib  # noqa: PLC0415 -- matplotlib loads only when curves are drawn; Agg is set before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 -- matplotlib loads only when curves are drawn; Agg is set before pyplot loads

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    for metric, per_label in sorted(values.items()):
        points = sorted((steps[lab], v) for lab, v in per_label.items() if v is not None and lab in steps)
        if not points:
            continue
        fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label="adapter")
        if base.get(metric) is not None:
            ax.axhline(base[metric], linestyle="--", color="grey", label="base (no adapter)")
        ax.set_xlabel("training step")
        ax.set_title(metric)
        ax.legend(loc="best", fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{metric}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png")
        plt.close(fig)
        written[metric] = path
    return written
