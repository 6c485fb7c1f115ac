"""Sampling from an AS-ARM: sequential, parallel and any-subset speculative decoding (ASSD).

``generate`` fills the hidden positions of token arrays; ``sample_text`` does the same for
``<mask:N>`` text prompts. See ``docs/sampling.md`` for the algorithm and its exactness.
"""
from asarm_jax.ordering import random_order
from asarm_jax.sampling.core import METHODS, Generation, generate
from asarm_jax.sampling.prompt import PromptError, parse, render, sample_text

__all__ = ["METHODS", "Generation", "PromptError", "generate", "parse", "random_order", "render",
           "sample_text"]
