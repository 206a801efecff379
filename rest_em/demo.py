"""`make demo`: the embedded default experiment (gin_configs/arithmetic.gin) on CPU.

A byte-level model learns arithmetic from worked solutions (mostly easy ones), then
improves on all levels with ReST^EM, with only the checker as feedback. Resumable: running it again
continues (or just re-prints the results); delete the workdir to start over.

  python -m rest_em.demo [--workdir=runs/demo] [--gin.EMConfig.seed=1 ...]
"""

from __future__ import annotations

import sys

from absl import app, flags

from rest_em import main as launcher

FLAGS = flags.FLAGS


def demo(argv) -> None:
    if not FLAGS.gin_file:
        FLAGS.gin_file = ["arithmetic.gin"]
    if not FLAGS.workdir:
        FLAGS.workdir = "runs/demo"
    print(
        f"ReST^EM on the embedded arithmetic task; artifacts in {FLAGS.workdir}/ "
        "(metrics.jsonl, accuracy.png, tensorboard/)",
        flush=True,
    )
    launcher.main(argv)
    print(
        f"\nplot: {FLAGS.workdir}/accuracy.png   TensorBoard: tensorboard --logdir {FLAGS.workdir}"
    )


if __name__ == "__main__":
    app.run(demo, argv=launcher.rewrite_gin_args(sys.argv))
