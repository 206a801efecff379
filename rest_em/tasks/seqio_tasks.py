"""The loop's tasks as seqio Tasks, for users whose pipelines speak seqio.

Importing this module imports seqio (and TensorFlow); nothing else in rest_em does.
Each example carries `inputs` (the prompt) and `targets` (the reference solution),
tokenized with the given vocabulary (default `seqio.ByteVocabulary`, which has the
same ids as `rest_em.tokenizers.ByteTokenizer`), plus the raw text, the gold answer
(`answer`, "" when missing), `problem_id` and `level` (-1 when unknown).
"""

from __future__ import annotations

try:
    import seqio
    import tensorflow as tf
except ImportError as e:  # seqio (and TensorFlow) are an optional extra
    raise ImportError(
        f"rest_em.tasks.seqio_tasks needs seqio, which is not installed ({e}); install "
        'the extra: pip install "rest_em[seqio]" (it brings TensorFlow)'
    ) from e

from rest_em.tasks.problems import Task


def _dataset_fn(
    task: Task, split: str, shuffle_files: bool, seed: int | None = None
) -> tf.data.Dataset:
    del shuffle_files, seed  # problems are a fixed, ordered list
    problems = task.load(split)
    has_solution = [p.solution is not None for p in problems]
    return tf.data.Dataset.from_tensor_slices(
        {
            "problem_id": [p.problem_id for p in problems],
            "inputs": [task.prompt(p) for p in problems],
            "targets": [task.target(p) if ok else "" for p, ok in zip(problems, has_solution)],
            "answer": [p.answer or "" for p in problems],
            "level": [-1 if p.level is None else p.level for p in problems],
        }
    )


def register(
    task: Task,
    *,
    name: str | None = None,
    splits=("train", "val", "test"),
    vocabulary: seqio.Vocabulary | None = None,
) -> seqio.Task:
    """Registers (or replaces) `task` in seqio's TaskRegistry as `name` (default rest_em_<name>)."""
    name = name or f"rest_em_{task.name}"
    vocabulary = vocabulary or seqio.ByteVocabulary()
    if name in seqio.TaskRegistry.names():
        seqio.TaskRegistry.remove(name)
    return seqio.TaskRegistry.add(
        name,
        source=seqio.FunctionDataSource(
            dataset_fn=lambda split, shuffle_files, seed=None: _dataset_fn(
                task, split, shuffle_files, seed
            ),
            splits=list(splits),
        ),
        preprocessors=[
            seqio.preprocessors.tokenize_and_append_eos,
        ],
        output_features={
            "inputs": seqio.Feature(vocabulary, add_eos=False),
            "targets": seqio.Feature(vocabulary, add_eos=True),
        },
    )
