"""Sampling methods as strategies of the one loop (:mod:`asarm_jax.sampling.core`).

Each method is a module with two functions over the loop's
:class:`~asarm_jax.sampling.state.State`:

* ``init(net, params, spec, state, use_cache) -> state``: makes the cache (if ``use_cache``)
  and runs the first call (the prefill), leaving the method's ``carry`` in the state;
* ``round(net, params, spec, state) -> state``: one round for every row; finished rows are
  left unchanged;

and the constant ``CALLS_PER_ROUND`` (network calls of one round).

Adding a method means adding a module and a line here. ``auto`` is not a strategy: it picks
one of these before the loop starts (:mod:`asarm_jax.sampling.methods.auto`).
"""
from asarm_jax.sampling.methods import assd, assd_fused, sequential, tree

STRATEGIES = {"sequential": sequential, "parallel": sequential, "assd": assd,
              "assd_fused": assd_fused, "tree": tree}
