"""Core: the mask builder, leakage (via gradients), the chain rule and the causal special case."""
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import density, forward, masks, models, objectives, ordering, sampling
from asarm_jax.models import two_stream
from asarm_jax.sampling import core
from tests.helpers import equations, model_config

VOCAB, LENGTH = 40, 8


def tiny_model(tie_embeddings=True, causal_prompt=False, layers=2):
  return models.build(model_config(
      vocab_size=VOCAB, num_layers=layers, d_model=32, num_heads=4, d_ff=64,
      tie_embeddings=tie_embeddings, causal_prompt=causal_prompt))


def init(model, batch=2, length=LENGTH, seed=0):
  return {"params": model.init(jax.random.PRNGKey(seed),
                               *models.example_inputs(batch, length, length))["params"]}


def random_problem(seed, batch=3, length=LENGTH, random_order=True):
  """Distinct tokens per row, a random visible set per row (sizes differ) and random orders."""
  rng = np.random.default_rng(seed)
  tokens = np.stack([rng.permutation(np.arange(4, VOCAB))[:length] for _ in range(batch)])
  visible = np.zeros((batch, length), bool)
  for b in range(batch):
    visible[b, rng.choice(length, size=b % (length - 1), replace=False)] = True
  order = rng.random((batch, length)) if random_order else None
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(visible), order


# ---------------------------------------------------------------------------------------------
# Masks against a brute-force reference in position space.

def brute_force_masks(rank, m, num_decoded, causal_prompt):
  length = len(rank)
  content = np.zeros((length, length), bool)
  query = np.zeros((length, length), bool)
  for i in range(length):
    for j in range(length):
      if causal_prompt:
        content[i, j] = rank[j] <= rank[i]
      elif rank[i] < m:                      # prompt row: the whole prompt
        content[i, j] = rank[j] < m
      else:                                  # generated row: prompt, sigma-earlier, itself
        content[i, j] = rank[j] < m or rank[j] <= rank[i]
      # query row of target i: sigma-earlier decoded content only, never its own token
      query[i, j] = rank[j] < rank[i] and rank[j] < num_decoded and rank[i] >= m
  return content, query


@pytest.mark.parametrize("causal_prompt", [False, True])
@pytest.mark.parametrize("seed", range(4))
def test_masks_match_brute_force(seed, causal_prompt):
  tokens, visible, order = random_problem(seed, batch=4)
  sigma = ordering.make_ordering(visible, order)
  rng = np.random.default_rng(seed)
  num_decoded = sigma.num_visible_B + jnp.asarray(rng.integers(0, 3, size=4), jnp.int32)
  for decoded in (None, num_decoded):
    # Rows and keys in position space: each carries its rank.
    dense = lambda limit: masks.dense(masks.Visibility(limit, sigma.rank_BxL))
    content = dense(masks.content_limit(sigma.rank_BxL, sigma.num_visible_B, causal_prompt))
    query = dense(masks.query_limit(sigma.rank_BxL,
                                    sigma.rank_BxL >= sigma.num_visible_B[:, None], decoded))
    for b in range(4):
      n = LENGTH if decoded is None else int(decoded[b])
      ref_c, ref_q = brute_force_masks(np.asarray(sigma.rank_BxL[b]),
                                       int(sigma.num_visible_B[b]), n, causal_prompt)
      np.testing.assert_array_equal(np.asarray(content[b]), ref_c)
      np.testing.assert_array_equal(np.asarray(query[b]), ref_q)


def test_ordering_puts_prompt_first_and_follows_order():
  visible = jnp.array([[False, True, False, False, True]])
  sigma = ordering.make_ordering(visible, jnp.array([[0.5, 9.0, 0.9, 0.1, 9.0]]))
  np.testing.assert_array_equal(sigma.perm_BxL[0], [1, 4, 3, 0, 2])
  np.testing.assert_array_equal(ordering.make_ordering(visible).perm_BxL[0], [1, 4, 0, 2, 3])
  x = jnp.arange(5)[None] * 10
  np.testing.assert_array_equal(
      ordering.to_position_space(ordering.to_rank_space(x, sigma.perm_BxL), sigma.perm_BxL), x)


# ---------------------------------------------------------------------------------------------
# Leakage, nanodo-style: gradients of each target's log-prob with respect to every input token.

def input_gradients(model, params, tokens_1xL, visible_1xL, order):
  """|d logp_j / d embedding(x_i)|, an L x L matrix (rows: target j; cols: input i).

  Tokens in a row are distinct and the head is untied, so the gradient with respect to the
  embedding row of token x_i is the gradient with respect to position i's content input.
  """
  return np.asarray(_input_gradients(model, params, jnp.asarray(tokens_1xL),
                                     jnp.asarray(visible_1xL), order))


@functools.partial(jax.jit, static_argnums=0)  # one compile, not op-by-op dispatch per row
def _input_gradients(model, params, tokens_1xL, visible_1xL, order):
  def logp_j(table, j):
    p = jax.tree_util.tree_map(lambda x: x, params)
    p["params"]["embed"]["embedding"] = table
    return density.log_prob(model, p, tokens_1xL, visible_1xL, order)[0, j]
  table = params["params"]["embed"]["embedding"]
  grads = jax.vmap(jax.grad(logp_j), in_axes=(None, 0))(table, jnp.arange(LENGTH))
  return jnp.abs(grads[:, tokens_1xL[0]]).sum(-1)  # L x L


@pytest.mark.parametrize("seed", range(3))
def test_no_leakage_from_own_or_later_tokens(seed):
  model = tiny_model(tie_embeddings=False)
  params = init(model, seed=seed)
  tokens, visible, order = random_problem(seed + 10, batch=3)
  for b in range(3):
    sigma = ordering.make_ordering(visible[b:b + 1], None if order is None else order[b:b + 1])
    rank = np.asarray(sigma.rank_BxL[0])
    m = int(sigma.num_visible_B[0])
    grads = input_gradients(model, params, tokens[b:b + 1], visible[b:b + 1],
                            None if order is None else order[b:b + 1])
    for j in range(LENGTH):
      for i in range(LENGTH):
        if rank[j] < m:                    # visible: no target, log-prob is the constant 0
          assert grads[j, i] == 0.0
        elif rank[i] >= rank[j]:           # own token or sigma-later: exactly zero
          assert grads[j, i] == 0.0, (b, j, i)
        else:                              # sigma-earlier: it must actually be used
          assert grads[j, i] > 0.0, (b, j, i)


@pytest.mark.parametrize("seed", range(2))
def test_content_stream_never_sees_sigma_later_tokens(seed):
  """Direct check of the content stream: each rank's cached last-layer key has zero gradient
  with respect to every token of a rank > max(r, m - 1), and a nonzero one otherwise."""
  model = tiny_model(tie_embeddings=False)
  params = init(model, seed=seed)
  tokens, visible, order = random_problem(seed + 20, batch=3)
  for b in range(1, 3):  # rows with a prompt (m > 0)
    sigma = ordering.make_ordering(visible[b:b + 1], order[b:b + 1])
    tokens_rank = ordering.to_rank_space(tokens[b:b + 1], sigma.perm_BxL)
    m = int(sigma.num_visible_B[0])
    rank = jnp.arange(LENGTH)[None]

    def key_norm(table, r):
      p = jax.tree_util.tree_map(lambda x: x, params)
      p["params"]["embed"]["embedding"] = table
      _, cache = forward.call(model, p, tokens_rank, sigma.perm_BxL, sigma.num_visible_B,
                              rank[:, :1], jnp.zeros((1, 1), bool),
                              cache=model.init_cache(1, LENGTH), content_rank_BxR=rank)
      return jnp.sum(cache.layers[-1].key[0, r] ** 2)
    table = params["params"]["embed"]["embedding"]
    grads = jax.jit(jax.vmap(jax.grad(key_norm), in_axes=(None, 0)))(table, jnp.arange(LENGTH))
    grads = np.asarray(jnp.abs(grads[:, tokens_rank[0]]).sum(-1))  # rows: key rank; cols: rank
    for r in range(LENGTH):
      for s in range(LENGTH):
        if s <= max(r, m - 1):
          assert grads[r, s] > 0.0, (b, r, s)
        else:
          assert grads[r, s] == 0.0, (b, r, s)


def test_draft_targets_see_only_decoded_tokens():
  model = tiny_model(tie_embeddings=False)
  params = init(model)
  tokens, visible, order = random_problem(3, batch=1)
  sigma = ordering.make_ordering(visible, order)
  tokens_rank = ordering.to_rank_space(tokens, sigma.perm_BxL)
  n = sigma.num_visible_B + 2
  target = n[:, None] + jnp.arange(3)[None]

  def draft_logits(tokens_rank):
    return forward.call(model, params, tokens_rank, sigma.perm_BxL, sigma.num_visible_B,
                        target, jnp.ones_like(target, bool), n)
  base = draft_logits(tokens_rank)
  changed = tokens_rank.at[:, int(n[0]):].set(5)    # rewrite every undecoded rank
  np.testing.assert_array_equal(np.asarray(draft_logits(changed)), np.asarray(base))
  changed = tokens_rank.at[:, int(n[0]) - 1].set(5)  # a decoded rank does matter
  assert not np.allclose(np.asarray(draft_logits(changed)), np.asarray(base))


# ---------------------------------------------------------------------------------------------
# Chain rule and the causal special case.

_call = jax.jit(forward.call, static_argnums=0)  # one compile, not op-by-op dispatch


@pytest.mark.parametrize("random_order", [False, True])
def test_log_prob_equals_one_token_at_a_time(random_order):
  model = tiny_model()
  params = init(model)
  tokens, visible, order = random_problem(7, batch=4, random_order=random_order)
  joint = density.log_prob(model, params, tokens, visible, order)
  sigma = ordering.make_ordering(visible, order)
  tokens_rank = ordering.to_rank_space(tokens, sigma.perm_BxL)
  total = np.zeros(4)
  for t in range(LENGTH):
    # One target row at rank t; every sigma-later token replaced, to show it is not used.
    later = jnp.arange(LENGTH)[None] > t
    scrambled = jnp.where(later, 4 + (tokens_rank * 7) % (VOCAB - 4), tokens_rank)
    target = jnp.full((4, 1), t, jnp.int32)
    logits = _call(model, params, scrambled, sigma.perm_BxL, sigma.num_visible_B, target,
                   target >= sigma.num_visible_B[:, None])
    logp = jax.nn.log_softmax(jnp.where(jnp.arange(VOCAB) < 4, -jnp.inf, logits), -1)
    step = jnp.take_along_axis(logp[:, 0], tokens_rank[:, t:t + 1], -1)[:, 0]
    total += np.where(t >= np.asarray(sigma.num_visible_B), np.asarray(step), 0.0)
  np.testing.assert_allclose(np.asarray(joint.sum(-1)), total, rtol=1e-5, atol=1e-5)
  assert np.all(np.asarray(joint)[np.asarray(visible)] == 0.0)


def test_no_visible_identity_order_is_a_causal_lm():
  model = tiny_model()
  params = init(model)
  tokens, _, _ = random_problem(11, batch=2, random_order=False)
  none_visible = jnp.zeros_like(tokens, bool)
  base = np.asarray(density.log_prob(model, params, tokens, none_visible))
  for cut in range(1, LENGTH):
    future = tokens.at[:, cut:].set(4 + (tokens[:, cut:] + 3) % (VOCAB - 4))
    changed = np.asarray(density.log_prob(model, params, future, none_visible))
    np.testing.assert_array_equal(changed[:, :cut], base[:, :cut])
  # ... and the joint objective with nothing visible is the causal LM cross-entropy.
  loss, metrics = objectives.joint_loss(model, params, tokens, jax.random.PRNGKey(0),
                                        fraction_range=(0.0, 0.0))
  assert float(metrics["visible_fraction"]) == 0.0
  np.testing.assert_allclose(float(loss), -base.mean(), rtol=1e-6)


def test_special_tokens_get_no_probability():
  logits = jax.random.normal(jax.random.PRNGKey(0), (2, 3, VOCAB))
  from asarm_jax import distribution
  logp = distribution.log_probs(logits, 4, temperature=0.7)
  assert np.all(np.isneginf(np.asarray(logp[..., :4])))
  np.testing.assert_allclose(np.asarray(jnp.exp(logp).sum(-1)), 1.0, rtol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_log_probs_are_the_tables_entries_with_its_gradient(temperature):
  """The training losses read each target's log-probability through
  ``distribution.token_log_probs``, whose own VJP never builds the table's cotangent: compiled
  (as the train step is), the same bits as ``log_probs``' entries, and the same bits of the
  gradient of a weighted sum of them as autodiff's through the table (a resumed old run
  depends on it: ``test_old_workdir.py``)."""
  from asarm_jax import distribution  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  logits = jnp.asarray(rng.normal(size=(3, 5, VOCAB)) * 3, jnp.float32)
  tokens = jnp.asarray(rng.integers(4, VOCAB, (3, 5)), jnp.int32)
  weights = jnp.asarray(rng.normal(size=(3, 5)), jnp.float32)
  through_table = lambda x: jnp.take_along_axis(distribution.log_probs(x, 4, temperature),
                                                tokens[..., None], -1)[..., 0]
  direct = lambda x: distribution.token_log_probs(x, tokens, 4, temperature)
  np.testing.assert_array_equal(jax.jit(direct)(logits), jax.jit(through_table)(logits))
  grads = [jax.jit(jax.grad(lambda x, f=f: (f(x) * weights).sum()))(logits)
           for f in (through_table, direct)]
  np.testing.assert_array_equal(grads[1], grads[0])
  assert np.all(np.asarray(grads[1][..., :4]) == 0)  # special ids: no probability, no gradient
  with pytest.raises(ValueError, match="static temperature > 0"):
    distribution.token_log_probs(logits, tokens, 4, 0.0)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_gelu_dense_is_dense_then_gelu_with_the_same_gradient(dtype):
  """``two_stream.GeluDense`` (the MLP's first layer, its GELU recomputed in the backward
  pass) has ``nn.Dense``'s parameters and initial values, and compiled, the same bits as
  ``gelu(nn.Dense(...))`` forward and the same bits of every gradient: old checkpoints load
  and train on unchanged."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 3, 16), jnp.float32)
  new = two_stream.GeluDense(32, dtype=dtype, param_dtype=jnp.float32)
  old = nn.Dense(32, kernel_init=nn.initializers.lecun_normal(), dtype=dtype,
                 param_dtype=jnp.float32)
  params = new.init(jax.random.PRNGKey(0), x)
  chex.assert_trees_all_equal(params, old.init(jax.random.PRNGKey(0), x))
  params = jax.tree.map(lambda p: p + 0.1, params)  # a bias that is not zero
  weights = jax.random.normal(jax.random.PRNGKey(2), (2, 3, 32), jnp.float32)
  losses = [lambda p, x: (new.apply(p, x).astype(jnp.float32) * weights).sum(),
            lambda p, x: (nn.gelu(old.apply(p, x)).astype(jnp.float32) * weights).sum()]
  values = [jax.jit(f)(params, x) for f in losses]
  grads = [jax.jit(jax.grad(f, argnums=(0, 1)))(params, x) for f in losses]
  np.testing.assert_array_equal(values[0], values[1])
  chex.assert_trees_all_equal(grads[0], grads[1])


# ---------------------------------------------------------------------------------------------
# Objectives.

def test_visible_fraction_is_stratified_and_specials_visible():
  tokens = jnp.full((16, 200), 7, jnp.int32).at[:, 50].set(2)   # an <eos> at position 50
  visible = objectives.sample_visible(jax.random.PRNGKey(0), tokens, (0.1, 0.5), 4)
  fractions = np.sort(np.asarray(visible.sum(-1) - 1) / 200)  # minus the forced <eos>
  strata = 0.1 + 0.4 * np.arange(17) / 16
  assert np.all(fractions >= strata[:-1] - 1 / 200) and np.all(fractions <= strata[1:])
  assert bool(visible[:, 50].all())


def test_parallel_loss_conditions_on_the_prompt_only():
  model = tiny_model(tie_embeddings=False)
  params = init(model)
  tokens, visible, _ = random_problem(5, batch=3, random_order=False)
  indep = np.asarray(density.log_prob(model, params, tokens, visible, independent=True))
  joint = np.asarray(density.log_prob(model, params, tokens, visible))
  for b in range(3):
    i = int(np.flatnonzero(~np.asarray(visible[b]))[0])     # the first hidden position
    changed = tokens.at[b, i].set(4 + (int(tokens[b, i]) + 1) % (VOCAB - 4))
    indep2 = np.asarray(density.log_prob(model, params, changed, visible, independent=True))
    joint2 = np.asarray(density.log_prob(model, params, changed, visible))
    others = np.arange(LENGTH) != i
    # Independent marginals of the other hidden tokens ignore x_i; sigma-later joints use it.
    np.testing.assert_array_equal(indep2[b, others], indep[b, others])
    assert not np.allclose(joint2[b, i + 1:], joint[b, i + 1:])
  loss, _ = objectives.joint_loss(model, params, tokens, jax.random.PRNGKey(0), parallel=True)
  assert np.isfinite(float(loss))


# ---------------------------------------------------------------------------------------------
# The draft term of the objective.

def _draft_problem(seed=7, batch=3, length=LENGTH):
  tokens, visible, order = random_problem(seed, batch=batch, length=length)
  sigma = ordering.make_ordering(visible, order)
  rows = objectives.draft_rows(jax.random.PRNGKey(seed), sigma.num_visible_B, length, 4, 3)
  return tokens, visible, order, sigma, rows


def test_draft_rows_are_the_samplers_draft_rows():
  """The objective's draft rows score exactly what the sampler's draft call proposes (the same
  query_mask limit), and cut points stay among the hidden ranks."""
  from asarm_jax import sampling  # pylint: disable=g-import-not-at-top
  from asarm_jax.sampling import drafts  # pylint: disable=g-import-not-at-top
  from asarm_jax.sampling import state as state_lib  # pylint: disable=g-import-not-at-top
  model = tiny_model(tie_embeddings=False)
  params = init(model)
  tokens, visible, order, sigma, (target, valid, limit) = _draft_problem()
  tokens_rank = ordering.to_rank_space(tokens, sigma.perm_BxL)
  got = np.asarray(density.target_log_probs(model, params, tokens_rank, sigma, target, valid,
                                            limit))
  m = np.asarray(sigma.num_visible_B)
  target, valid, limit = map(np.asarray, (target, valid, limit))
  assert valid.any() and (limit[valid] >= m.repeat(valid.sum(1))).all()
  assert ((target - limit)[valid] >= 1).all() and ((target - limit)[valid] <= 3).all()
  state = state_lib.init_state(tokens, visible, jnp.asarray(order, jnp.float32),
                               jnp.full((3,), LENGTH, jnp.int32), jax.random.PRNGKey(0))
  draft = jax.jit(lambda n: drafts.draft_log_probs(
      sampling.ModelNetwork(model), params, state.replace(num_decoded_B=n), LENGTH))
  for b, k in zip(*np.nonzero(valid)):
    logq = draft(jnp.full((3,), limit[b, k], jnp.int32))
    want = logq[b, target[b, k] - limit[b, k], tokens_rank[b, target[b, k]]]
    np.testing.assert_allclose(got[b, k], want, atol=1e-5)


def test_draft_rows_get_no_gradient_from_ranks_at_or_after_their_limit():
  """Gradient leakage of the draft term: each draft row's scored log-prob (as the objective
  computes it) has zero gradient with respect to the content of every rank >= its limit, and a
  nonzero one with respect to every rank below it. Tokens in a row are distinct and the head is
  untied, so an embedding row's gradient is that rank's content input's."""
  model = tiny_model(tie_embeddings=False)
  params = init(model)
  tokens, _, _, sigma, (target, valid, limit) = _draft_problem(seed=3)
  tokens_rank = ordering.to_rank_space(tokens, sigma.perm_BxL)

  def logp(table, b, k):
    p = {"params": dict(params["params"], embed={"embedding": table})}
    return density.target_log_probs(model, p, tokens_rank, sigma, target, valid, limit)[b, k]
  table = params["params"]["embed"]["embedding"]
  grad = jax.jit(jax.grad(logp))
  target, valid, limit = map(np.asarray, (target, valid, limit))
  assert valid.sum() > 4
  for b, k in zip(*np.nonzero(valid)):
    per_rank = np.abs(np.asarray(grad(table, b, k))[np.asarray(tokens_rank[b])]).sum(-1)
    n = limit[b, k]
    assert (per_rank[n:] == 0.0).all(), (b, k, n, per_rank)
    assert (per_rank[:n] > 0.0).all(), (b, k, n, per_rank)


def test_draft_term_leaves_the_joint_term_unchanged():
  model = tiny_model()
  params = init(model, batch=4)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (4, LENGTH), 4, VOCAB)
  rng = jax.random.PRNGKey(2)
  plain_loss, plain = objectives.joint_loss(model, params, tokens, rng, fraction_range=(0.1, 0.5))
  loss, both = objectives.joint_loss(model, params, tokens, rng, fraction_range=(0.1, 0.5),
                                     draft_weight=0.5, draft_depth=3, draft_cuts=4)
  np.testing.assert_allclose(both["bits_per_token"], plain["bits_per_token"], rtol=1e-6)
  draft_nats = float(both["draft_bits_per_token"]) * np.log(2)
  np.testing.assert_allclose(loss, plain_loss + 0.5 * draft_nats, rtol=1e-5)
  assert draft_nats > 0


# ---------------------------------------------------------------------------------------------
# One trace across different masks.

def test_forward_and_loss_compile_once():
  model = tiny_model()
  params = init(model)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def log_prob(tokens, visible, order):
    return density.log_prob(model, params, tokens, visible, order)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def loss(tokens, rng):
    return objectives.joint_loss(model, params, tokens, rng, random_order=True)[0]

  for seed in range(3):
    tokens, visible, order = random_problem(seed, batch=3)
    log_prob(tokens, visible, jnp.asarray(order))
    loss(tokens, jax.random.PRNGKey(seed))


def test_fused_attention_padding_changes_nothing(monkeypatch):
  """The cuDNN path pads rows to even and key slots to a multiple of 8; run through the XLA
  kernel on CPU, the padded call must equal the unpadded one (padded slots never attended)."""
  from asarm_jax.models import attention
  real = jax.nn.dot_product_attention
  seen = []

  def kernel(*args, implementation=None, **kwargs):
    seen.append(args[0].shape[1:2] + args[1].shape[1:2])
    return real(*args, implementation="xla", **kwargs)

  rng = np.random.default_rng(0)
  batch, rows, slots, heads, dim = 2, 7, 12, 3, 8
  q, k, v = (jnp.asarray(rng.normal(size=(batch, n, heads, dim)), jnp.float32)
             for n in (rows, slots, slots))
  sink_key, sink_value = (jnp.asarray(rng.normal(size=(heads, dim)), jnp.float32)
                          for _ in range(2))
  visibility = masks.Visibility(jnp.asarray(rng.integers(0, slots + 1, (batch, rows)), jnp.int32),
                                jnp.asarray(rng.permuted(np.tile(np.arange(slots), (batch, 1)), axis=1),
                                            jnp.int32))
  positions = jnp.asarray(rng.integers(0, 50, (batch, rows + slots)), jnp.int32)
  args = (q, k, v, sink_key, sink_value, visibility, positions[:, :rows], positions[:, rows:],
          True)
  expected = attention.attend(*args, "xla")
  monkeypatch.setattr(jax.nn, "dot_product_attention", kernel)
  padded = attention.attend(*args, "cudnn")
  assert seen == [(8, 16)]  # 7 rows -> 8; the sink + 12 slots -> 16
  np.testing.assert_allclose(padded, expected, rtol=1e-5, atol=1e-6)


# The leaves models.compute_params casts to the compute dtype.
CAST_LEAVES = ("['kernel']", "['embedding']", "['sink_key']", "['sink_value']")


@pytest.mark.parametrize("arch", ["two_stream", "xlnet"])
def test_compute_params_change_no_output(arch):
  """The samplers cast weight matrices, embeddings and the attention sinks to bf16 once before
  their loop; a bf16 model must give bit-identical logits either way, and the leaves the
  modules compute with in float32 (LayerNorm, XLNet's relative biases) stay float32."""
  model = models.build(model_config(
      arch=arch, vocab_size=VOCAB, num_layers=2, d_model=32, num_heads=4, d_ff=64,
      dtype="bfloat16"))
  # Init leaves LayerNorm at 1 and 0, exact in bf16: perturb every leaf so a wrong cast shows.
  leaves, treedef = jax.tree.flatten(init(model))
  keys = jax.random.split(jax.random.PRNGKey(1), len(leaves))
  params = treedef.unflatten([x + 0.01 * jax.random.normal(key, x.shape, x.dtype)
                              for x, key in zip(leaves, keys)])
  cast = models.compute_params(model, params)
  dtypes = {jax.tree_util.keystr(path): leaf.dtype
            for path, leaf in jax.tree_util.tree_leaves_with_path(cast)}
  assert {d for k, d in dtypes.items() if k.endswith(CAST_LEAVES)} == {jnp.dtype(jnp.bfloat16)}
  assert {d for k, d in dtypes.items() if not k.endswith(CAST_LEAVES)} == {
      jnp.dtype(jnp.float32)}
  tokens, visible, order = random_problem(0, batch=3)
  sigma = ordering.make_ordering(visible, jnp.asarray(order))
  targets = jnp.broadcast_to(jnp.arange(LENGTH, dtype=jnp.int32), (3, LENGTH))
  valid = targets >= sigma.num_visible_B[:, None]
  tokens_rank = ordering.to_rank_space(tokens, sigma.perm_BxL)
  call = jax.jit(lambda p, decoded: forward.call(model, p, tokens_rank, sigma.perm_BxL,
                                                 sigma.num_visible_B, targets, valid, decoded))
  for decoded in (None, sigma.num_visible_B + 1):  # sigma-causal rows, then draft rows
    np.testing.assert_array_equal(call(cast, decoded), call(params, decoded))


def _float_casts(jaxpr) -> set[tuple[int, ...]]:
  """Shapes of the float32 -> bfloat16 casts in ``jaxpr`` and its sub-jaxprs."""
  return {tuple(eqn.invars[0].aval.shape) for eqn in equations(jaxpr)
          if eqn.primitive.name == "convert_element_type"
          and eqn.params["new_dtype"] == jnp.bfloat16 and eqn.invars[0].aval.dtype == jnp.float32}


def test_the_sampling_loop_gets_its_weights_cast():
  """A bf16 model's weights are cast by a program of their own before the sampling loop's, so
  that no compiler pass can move the casts into the loop (every call casting every weight
  again): the loop's program casts no weight matrix, embedding or sink."""
  model = models.build(model_config(vocab_size=VOCAB, num_layers=2, d_model=32, num_heads=4,
                                    d_ff=64, dtype="bfloat16"))
  params = init(model)
  tokens, visible, _ = random_problem(0, batch=2)
  jaxpr = jax.make_jaxpr(lambda p: sampling.generate(model, p, tokens, visible,
                                                     jax.random.key(0)))(params)
  programs = {eqn.params["name"]: eqn.params["jaxpr"].jaxpr for eqn in jaxpr.jaxpr.eqns
              if eqn.primitive.name in ("pjit", "jit")}
  loop = [jaxpr for name, jaxpr in programs.items() if name.startswith("sample_")]
  weights = {tuple(leaf.shape) for path, leaf in jax.tree_util.tree_leaves_with_path(params)
             if jax.tree_util.keystr(path).endswith(CAST_LEAVES)}
  assert len(loop) == 1 and not _float_casts(loop[0]) & weights
  assert weights <= _float_casts(programs["prepare"])


def test_a_one_row_cache_write_updates_in_place_what_the_scatter_writes():
  """A batch-1 decoding call writes each layer's one new key and value by a dynamic update
  slice, not a scatter, whose bounds check reads the slot back (two GPU kernels a layer more);
  at every slot it writes what the batched scatter writes for that row."""
  rs = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rs.normal(size=shape), jnp.float32)
  cache = two_stream.LayerCache(normal(2, 6, 3, 4), normal(2, 6, 3, 4))
  k_Bx1xNxH, v_Bx1xNxH = normal(2, 1, 3, 4), normal(2, 1, 3, 4)
  first = lambda tree: jax.tree.map(lambda x: x[:1], tree)
  for slot in range(6):
    slots_Bx1 = jnp.asarray([[slot], [(slot + 2) % 6]])
    both = two_stream.write_layer_cache(cache, k_Bx1xNxH, v_Bx1xNxH, slots_Bx1)
    alone = two_stream.write_layer_cache(first(cache), *first((k_Bx1xNxH, v_Bx1xNxH, slots_Bx1)))
    for one, batched in zip(alone, both):
      np.testing.assert_array_equal(one, batched[:1])
  text = jax.jit(two_stream.write_layer_cache).lower(
      first(cache), *first((k_Bx1xNxH, v_Bx1xNxH, slots_Bx1))).as_text()
  assert "dynamic_update_slice" in text and "scatter" not in text


def test_weights_are_prepared_without_copying_the_leaves_left_as_they_are():
  """The prepare program computes only the leaves ``net.prepare`` changes (the bf16 casts);
  the others are the caller's arrays themselves, not copies made in every dispatch."""
  model = models.build(model_config(vocab_size=VOCAB, num_layers=2, d_model=32, num_heads=4,
                                    d_ff=64, dtype="bfloat16"))
  params = init(model)
  net = sampling.ModelNetwork(model)
  prepared = core._prepare(net, params, graphs=False)  # pylint: disable=protected-access
  expected = models.compute_params(model, params)
  assert jax.tree.structure(prepared) == jax.tree.structure(expected)
  kept = 0
  for (path, leaf), given, want in zip(jax.tree_util.tree_leaves_with_path(prepared),
                                       jax.tree.leaves(params), jax.tree.leaves(expected)):
    cast = jax.tree_util.keystr(path).endswith(CAST_LEAVES)
    assert (leaf is given) != cast and leaf.dtype == want.dtype, jax.tree_util.keystr(path)
    np.testing.assert_array_equal(np.asarray(leaf, np.float32), np.asarray(want, np.float32))
    kept += not cast
  program, _, _ = core._prepare_program(  # pylint: disable=protected-access
      net, core._signature(params), False)  # pylint: disable=protected-access
  compiled = program.lower(*jax.tree.leaves(params)).compile().as_text()
  assert kept > 0 and " copy(" not in compiled


def test_generate_traced_inside_another_jit_gives_its_own_tokens():
  """``generate`` compiles its loop with ``core.compiler_options``, which JAX accepts only for a
  top-level program: traced inside a user's ``jax.jit`` it runs without them, same tokens."""
  model = models.build(model_config(vocab_size=VOCAB, num_layers=2, d_model=32, num_heads=4,
                                    d_ff=64))
  params = init(model)
  tokens, visible, _ = random_problem(0, batch=2)
  decode = lambda p: sampling.generate(model, p, tokens, visible, jax.random.key(3),
                                       method="assd", k=3).tokens_BxL
  np.testing.assert_array_equal(jax.jit(decode)(params), decode(params))
  # every argument closed over: still traced inside, at batch 1 (command buffers' rule)
  alone = lambda: sampling.generate(model, params, tokens[:1], visible[:1], jax.random.key(3),
                                    method="sequential").tokens_BxL
  np.testing.assert_array_equal(jax.jit(alone)(), alone())


def test_a_model_block_lacking_a_key_is_an_error():
  """Defaults live in the config base only: the model restates none."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  partial = {k: v for k, v in model_config().items() if k != "alibi"}
  with pytest.raises(ValueError, match=r"lacks \['alibi'\]"):
    models.build(ml_collections.ConfigDict(partial))


def test_loops_run_as_cuda_graphs_where_measured_to_help(monkeypatch):
  """``sampling.core.command_buffers``: ``auto`` at any batch and every decoder at batch 1
  (docs/results.md, 2026-12-06), unless ``$ASARM_JAX_COMMAND_BUFFERS`` says on or off; the
  options keep XLA's default commands and add the loop's, and deterministic decoding never
  takes them. (A loop compiled with them for a GPU: tests/test_compiled_kernels.py.)"""
  specs = (sampling.SamplerSpec(method="sequential"), sampling.SamplerSpec(method="tree"),
           sampling.SamplerSpec(method="auto"))
  decide = lambda deterministic=False: [core.command_buffers(spec, slots, deterministic)
                                        for spec in specs for slots in (1, 64)]
  monkeypatch.delenv(core.COMMAND_BUFFERS_ENV, raising=False)
  assert decide() == [True, False, True, False, True, True]
  assert decide(deterministic=True) == [False] * 6
  for setting in ("on", "off"):
    monkeypatch.setenv(core.COMMAND_BUFFERS_ENV, setting)
    assert decide() == [setting == "on"] * 6
    assert decide(deterministic=True) == [False] * 6
  monkeypatch.setenv(core.COMMAND_BUFFERS_ENV, "yes")
  with pytest.raises(ValueError, match="measured, on or off"):
    decide()
  commands = core.compiler_options(False, True)["xla_gpu_enable_command_buffer"].split(",")
  assert commands[:2] == ["FUSION", "CUBLAS"] and commands[-2:] == ["WHILE", "CONDITIONAL"]
  assert core.compiler_options(False, False) == core.COMPILER_OPTIONS
  assert core.compiler_options(True, False) == core.DETERMINISTIC_OPTIONS
