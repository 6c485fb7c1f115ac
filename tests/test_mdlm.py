"""The masked-diffusion baseline (asarm_jax/mdlm.py): its bound against a brute-force integral,
the denoiser's visibility, training through the train step, and its config."""
import functools
import itertools
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from asarm_jax import config_base, density, forward, mdlm, models, objectives, optim, ordering, train
from asarm_jax.evaluation import density_eval
from tests.helpers import ROOT, model_config, shared_compilation_cache  # pylint: disable=unused-import
from tests.helpers import tiny_config

# Position 2 holds <eos> (id 2): never masked, always seen. Position 5 is visible in the
# held-out case. n = 6 (training) or 5 (held-out) maskable tokens: 63 or 31 masked sets.
ROW = np.asarray([5, 9, 2, 7, 11, 4, 8], np.int32)
HELDOUT_VISIBLE = np.arange(len(ROW)) == 5


@functools.lru_cache(maxsize=None)
def tiny():
  model = models.build(model_config(vocab_size=12, num_layers=1, d_model=16, num_heads=2,
                                    d_ff=32))
  params = jax.jit(lambda rng: {"params": model.init(rng, *models.example_inputs(1, 7, 7))[
      "params"]})(jax.random.PRNGKey(0))
  return model, params


def brute_force(visible_L):
  """``(NELBO per maskable token, largest single-token NLL, n)`` of ROW given ``visible_L`` and
  its special token, from the definition: ``E_{t ~ U(0, 1)} E_{z_t} [(1 / t) sum_{masked}
  -log p(x_l | z_t)]`` with every masked set S and its probability ``t^|S| (1 - t)^(n - |S|)``,
  and the integral over ``t`` by Gauss-Legendre. Given t the integrand is a polynomial of degree
  n - 1 in t (the empty set scores 0), so n nodes integrate it exactly."""
  model, params = tiny()
  maskable = np.flatnonzero((ROW >= 4) & ~visible_L)
  n = len(maskable)
  sets = [s for k in range(1, n + 1) for s in itertools.combinations(maskable, k)]
  masked_SxL = np.zeros((len(sets), len(ROW)), bool)
  for i, s in enumerate(sets):
    masked_SxL[i, list(s)] = True
  tokens_SxL = np.broadcast_to(ROW, masked_SxL.shape)
  log_prob = jax.jit(functools.partial(density.log_prob, model, independent=True))
  logp_SxL = np.asarray(log_prob(params, tokens_SxL, ~masked_SxL), np.float64)
  nll_S, size_S = -logp_SxL.sum(-1), masked_SxL.sum(-1)
  nodes, weights = np.polynomial.legendre.leggauss(n)
  nelbo = sum(w / 2 * np.sum(t ** size_S * (1 - t) ** (n - size_S) * nll_S) / t
              for t, w in zip((nodes + 1) / 2, weights))
  return nelbo / n, float(-logp_SxL[masked_SxL].min()), n


def test_training_loss_estimates_the_brute_force_bound():
  """The loss (stratified t, Bernoulli(t) masks, weight 1/t) is an unbiased estimate of the
  NELBO. Its variance is finite only because float32 times are at least 2^-23 / B: per key,
  Var <= M^2 (ln B + 23 ln 2 + 1 + n) / (B n) with M the largest token NLL (from E[|S|^2 / t^2]
  <= E[n / t + n^2] and E[1 / t] <= ln B + 23 ln 2 + 1 over the slices). The mean over K keys
  lies within 4 of the resulting standard errors."""
  model, params = tiny()
  exact, largest, n = brute_force(np.zeros(len(ROW), bool))
  batch, num_keys = 512, 64
  tokens_BxL = jnp.broadcast_to(jnp.asarray(ROW), (batch, len(ROW)))
  losses = jax.jit(jax.vmap(lambda rng: mdlm.loss(model, params, tokens_BxL, rng)[0]))(
      jax.random.split(jax.random.PRNGKey(1), num_keys))
  bound = largest * math.sqrt((math.log(batch) + 23 * math.log(2) + 1 + n) / (batch * n))
  assert abs(float(np.mean(losses)) - exact) < 4 * bound / math.sqrt(num_keys)
  assert 4 * bound / math.sqrt(num_keys) < 0.1 * exact  # the check has teeth


def test_heldout_bound_estimates_the_brute_force_bound_deterministically():
  """The held-out estimate (k uniform, a uniform set of k, weight n / k: t integrated out) of the
  bound on the hidden tokens given a visible one: unbiased (terms are bounded, so the spread
  over keys gives honest standard errors), and a function of its key."""
  model, params = tiny()
  exact, _, _ = brute_force(HELDOUT_VISIBLE)
  batch, num_keys = 128, 64
  tokens_BxL = jnp.broadcast_to(jnp.asarray(ROW), (batch, len(ROW)))
  visible_BxL = jnp.broadcast_to(jnp.asarray(HELDOUT_VISIBLE), (batch, len(ROW))) | (
      tokens_BxL < model.num_special_tokens)

  @jax.jit
  @jax.vmap
  def per_token(rng):
    nats, count = mdlm.heldout_nelbo(model, params, tokens_BxL, visible_BxL, rng)
    return nats / count
  keys = jax.random.split(jax.random.PRNGKey(2), num_keys)
  estimates = np.asarray(per_token(keys))
  assert abs(estimates.mean() - exact) < 4 * estimates.std(ddof=1) / math.sqrt(num_keys)
  np.testing.assert_array_equal(np.asarray(per_token(keys)), estimates)
  # The density task reports it beside an AS-ARM's exact orders (on the same visible sets), and
  # alone for an MDLM.
  assert density_eval.orders_for("asarm") == density_eval.ORDERS
  assert "mdlm_elbo" in density_eval.ORDERS and density_eval.orders_for("mdlm") == ("mdlm_elbo",)
  evaluate = functools.partial(density_eval.evaluate, model, params, [np.asarray(tokens_BxL)],
                               (0.0, 0.5), 3)
  table = evaluate(orders=("left_to_right", "mdlm_elbo"))["bits_per_token"]
  alone = evaluate(orders=density_eval.orders_for("mdlm"))["bits_per_token"]
  assert alone == {"mdlm_elbo": table["mdlm_elbo"]}


def test_a_masked_prediction_sees_every_unmasked_token_and_no_masked_one():
  """Leakage: |d log p(x_j | z) / d embedding(x_i)| is exactly 0 for every masked input i
  (its own token included) and > 0 for every unmasked one; the sampler's call (rank space,
  the unmasked tokens as the prompt, num_decoded = their number) gives the same rows whatever
  the masked tokens are."""
  vocab, length = 40, 8
  model = models.build(model_config(vocab_size=vocab, num_layers=2, d_model=32, num_heads=4,
                                    d_ff=64, tie_embeddings=False))
  params = jax.jit(lambda rng: {"params": model.init(
      rng, *models.example_inputs(1, length, length))["params"]})(jax.random.PRNGKey(3))
  rng = np.random.default_rng(0)
  tokens_1xL = jnp.asarray(rng.permutation(np.arange(4, vocab))[:length][None], jnp.int32)
  masked_1xL = jnp.asarray([[True, False, True, True, False, False, True, False]])

  @jax.jit
  def gradients(table):
    def logp_j(table, j):
      p = jax.tree_util.tree_map(lambda x: x, params)
      p["params"]["embed"]["embedding"] = table
      return mdlm.masked_log_probs(model, p, tokens_1xL, masked_1xL)[0, j]
    grads = jax.vmap(jax.grad(logp_j), in_axes=(None, 0))(table, jnp.arange(length))
    return jnp.abs(grads[:, tokens_1xL[0]]).sum(-1)  # L x L: rows target j, cols input i
  grads = np.asarray(gradients(params["params"]["embed"]["embedding"]))
  masked = np.asarray(masked_1xL[0])
  for j in np.flatnonzero(masked):
    assert (grads[j, masked] == 0.0).all(), j
    assert (grads[j, ~masked] > 0.0).all(), j

  sigma = ordering.make_ordering(~masked_1xL)
  hidden_rank_1xK = jnp.arange(length)[None] >= sigma.num_visible_B[:, None]

  @jax.jit
  def sampler_logits(tokens_1xL):
    return forward.call(model, params, ordering.to_rank_space(tokens_1xL, sigma.perm_BxL),
                        sigma.perm_BxL, sigma.num_visible_B, jnp.arange(length)[None],
                        hidden_rank_1xK, sigma.num_visible_B)
  base = np.asarray(sampler_logits(tokens_1xL))[hidden_rank_1xK]
  rewritten = jnp.where(masked_1xL, 4 + (tokens_1xL + 7) % (vocab - 4), tokens_1xL)
  np.testing.assert_array_equal(np.asarray(sampler_logits(rewritten))[hidden_rank_1xK], base)
  rewritten = tokens_1xL.at[0, 1].set(4 + (int(tokens_1xL[0, 1]) + 7) % (vocab - 4))
  assert not np.allclose(np.asarray(sampler_logits(rewritten))[hidden_rank_1xK], base)


def test_training_steps_with_the_mdlm_objective_lower_its_heldout_bound():
  config = tiny_config()
  config.objective.kind = "mdlm"
  config.optim.learning_rate = 3e-3
  config.train.num_steps = 60
  model = models.build(config.model)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  step = jax.jit(train.make_train_step(model, tx, config))
  state = jax.jit(lambda rng: train.create_state(model, tx, rng, config.data.seq_len))(
      jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  data = rng.integers(4, config.model.vocab_size, (config.train.batch_size, config.data.seq_len),
                      dtype=np.int32)
  data[:, 1::2] = data[:, ::2]  # a learnable dependency: every odd token repeats its left one
  heldout = jax.jit(objectives.heldout_step(model, config.objective, (0.0, 0.5)))
  before = heldout(state.params, data)
  assert set(before) == {"elbo_bits_per_token@0", "elbo_bits_per_token@0.5"}
  for _ in range(config.train.num_steps):
    state, metrics = step(state, data, jax.random.PRNGKey(1))
  assert {"loss", "bits_per_token", "visible_fraction"} <= set(metrics)
  after = heldout(state.params, data)
  for key, bits in before.items():
    assert float(after[key]) < 0.8 * float(bits), key


def test_the_objective_kind_defaults_to_asarm_and_is_checked():
  """Old configs (no objective.kind) read as the AS-ARM's; the MDLM config is xlnet_base's but
  for the kind."""
  saved = json.loads(config_base.base_config().to_json_best_effort())
  del saved["objective"]["kind"]
  assert config_base.complete(saved).objective.kind == "asarm"
  mdlm_config = config_base.from_file(f"{ROOT}/configs/mdlm_base.py")
  base = config_base.from_file(f"{ROOT}/configs/xlnet_base.py")
  assert mdlm_config.objective.kind == "mdlm"
  base.objective.kind = "mdlm"
  assert mdlm_config.to_json_best_effort() == base.to_json_best_effort()
  base.objective.kind = "mdml"
  with pytest.raises(ValueError, match=r"objective.kind='mdml': expected one of \('asarm', "):
    objectives.from_config(tiny()[0], base.objective)
