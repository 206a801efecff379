"""Run outputs a person reads: metrics.jsonl, TensorBoard event files and a PNG plot.

All three are rebuilt from the per-iteration metrics each time, so a resumed run never
duplicates or loses a point. Only process 0 writes (multi-host runs).
"""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Sequence

from rest_em import partitioning
from rest_em import workdir as workdir_lib


class MetricsWriter:
    def __init__(self, workdir: str | pathlib.Path):
        self.paths = workdir_lib.RunPaths(pathlib.Path(workdir))

    def write_all(self, history: Sequence[dict]) -> None:
        if not partitioning.is_main_process():
            return
        workdir_lib.write_jsonl(self.paths.metrics, history)
        self._tensorboard(history)
        plot_accuracy(history, self.paths.plot)

    def _tensorboard(self, history: Sequence[dict]) -> None:
        from tensorboardX import SummaryWriter  # lazy: protobuf only when writing

        logdir = self.paths.tensorboard
        shutil.rmtree(logdir, ignore_errors=True)
        with SummaryWriter(str(logdir)) as w:
            for m in history:
                for k, v in flatten(m).items():
                    if k != "iteration" and isinstance(v, (int, float)) and v is not None:
                        # TensorBoard tags allow [A-Za-z0-9_./-]: "pass@8" -> "pass_at_8".
                        w.add_scalar(k.replace("@", "_at_"), v, global_step=m["iteration"])


def flatten(m: dict, prefix: str = "") -> dict:
    """{"seconds": {"generate": 3}} -> {"seconds/generate": 3}."""
    out = {}
    for k, v in m.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}/"))
        else:
            out[f"{prefix}{k}"] = v
    return out


def plot_accuracy(history: Sequence[dict], path: str | pathlib.Path) -> None:
    """Greedy pass@1 on train and test (and test pass@k, and the transfer tasks' greedy
    pass@1) per iteration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    its = [m["iteration"] for m in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    keys = ["train/greedy_pass@1", "test/greedy_pass@1"]
    keys += sorted(
        {k for m in history for k in m if k.startswith("test/pass@")},
        key=lambda k: int(k.split("@")[1]),
    )
    keys += sorted({k for m in history for k in m if k.endswith("/test/greedy_pass@1")})
    for k in keys:
        ys = [m.get(k) for m in history]
        if any(y is not None for y in ys):
            ax.plot(its, [float("nan") if y is None else y for y in ys], marker="o", label=k)
    ax.set_xlabel("ReST^EM iteration (0 = base model)")
    ax.set_ylabel("accuracy")
    ax.set_xticks(its)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
