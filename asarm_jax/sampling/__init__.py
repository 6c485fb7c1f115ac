"""Sampling from an AS-ARM: sequential, parallel, ASSD, fused ASSD and exact tree decoding.

``generate`` fills the hidden positions of token arrays with the sampler a
:class:`SamplerSpec` describes; ``sample_text`` does the same for ``<mask:N>`` text prompts.
See ``docs/sampling.md`` for the algorithms and their exactness.
"""
from asarm_jax.ordering import random_order
from asarm_jax.sampling.core import Generation, generate
from asarm_jax.sampling.network import ModelNetwork, Network
from asarm_jax.sampling.prompt import PromptError, parse, render, sample_text
from asarm_jax.sampling.spec import METHODS, SamplerSpec

__all__ = ["METHODS", "Generation", "ModelNetwork", "Network", "PromptError", "SamplerSpec",
           "generate", "parse", "random_order", "render", "sample_text"]
