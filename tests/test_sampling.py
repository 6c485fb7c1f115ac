"""Tests of asarm_jax.sampling on a trained network: exactness, caches, traces, greedy, prompts.

The model is trained for a few steps on a Markov chain so that its joint is far from a product
of marginals. Two exactness runs compare its samples with the joint that ``density.log_prob``
assigns to all V^h completions (``tests/sampling_cases.py``); every other method and setting is
checked on an analytic joint in ``test_exactness.py``, where the same test rejects ``parallel``.
"""
from __future__ import annotations

import itertools

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from asarm_jax import density, forward, models, objectives, sampling
from asarm_jax.sampling import core, drafts
from asarm_jax.sampling import state as state_lib
from tests.helpers import CharTokenizer, model_config
from asarm_jax.sampling.methods import tree as tree_method
from tests.sampling_cases import (ALPHA, GROUPS, LENGTH, NUM_SPECIAL, ROWS_PER_GROUP, RUNS, VOCAB,
                                  batch, check_prompt_padding_and_calls, generate_run,
                                  group_arrays, hidden, p_values)

def _markov_batch(rs: np.random.Generator, batch: int) -> jnp.ndarray:
  """x_{i+1} = x_i + 1 (mod VOCAB) with probability 0.8, else uniform."""
  x_BxL = np.zeros((batch, LENGTH), np.int32)
  x_BxL[:, 0] = rs.integers(0, VOCAB, batch)
  for i in range(1, LENGTH):
    step = (x_BxL[:, i - 1] + 1) % VOCAB
    x_BxL[:, i] = np.where(rs.random(batch) < 0.8, step, rs.integers(0, VOCAB, batch))
  return jnp.asarray(x_BxL + NUM_SPECIAL)


@pytest.fixture(scope="module")
def trained():
  model = models.build(model_config(vocab_size=VOCAB + NUM_SPECIAL, num_layers=2, d_model=32,
                                    num_heads=2, d_ff=64, num_special_tokens=NUM_SPECIAL))
  params = model.init(jax.random.key(0), *models.example_inputs(1, LENGTH, 2))
  optimizer = optax.adam(5e-3)

  @jax.jit
  def update(params, opt_state, tokens_BxL, rng):
    loss_fn = lambda p: objectives.joint_loss(model, p, tokens_BxL, rng,
                                              fraction_range=(0.0, 0.5), random_order=True)[0]
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  rs, opt_state = np.random.default_rng(0), optimizer.init(params)
  for i in range(100):
    params, opt_state = update(params, opt_state, _markov_batch(rs, 64), jax.random.key(i))
  return model, params


REAL_RUNS = ("assd_fused_k3", "tree_n7_ngram", "auto_k4")  # the rest: on the analytic joint


def _exact_joint(model, params, group, temperature):
  """Probabilities of all VOCAB^h completions (lexicographic over hidden positions)."""
  visible_tokens, _, length = group
  tokens, visible, order = group_arrays(*group)
  hidden_positions = hidden(visible_tokens, length)
  fills = np.array(list(itertools.product(range(VOCAB), repeat=len(hidden_positions))))
  tokens_CxL = np.repeat(tokens, len(fills), 0)
  tokens_CxL[:, hidden_positions] = fills + NUM_SPECIAL
  logp_CxL = density.log_prob(model, params, jnp.asarray(tokens_CxL[:, :length]),
                              jnp.asarray(np.repeat(visible[:, :length], len(fills), 0)),
                              jnp.asarray(np.repeat(order[:, :length], len(fills), 0)),
                              temperature=temperature)
  probs = np.exp(np.asarray(logp_CxL, np.float64).sum(-1))
  assert abs(probs.sum() - 1) < 1e-4  # density.log_prob is a normalised joint.
  return probs / probs.sum()


@pytest.mark.parametrize("run", REAL_RUNS)
def test_samples_of_the_network_follow_its_joint(trained, run):
  """The trained network's samples against its own density (the analytic joint covers every
  method in ``test_exactness.py``; these two are the most intricate calls and caches)."""
  model, params = trained
  gen = generate_run(model, params, run, seed=100 + list(RUNS).index(run))
  check_prompt_padding_and_calls(gen, run)
  joints = {name: _exact_joint(model, params, group, RUNS[run][2])
            for name, group in GROUPS.items()}
  p = p_values(gen, joints)
  assert all(value > ALPHA for value in p.values()), p


_call = jax.jit(forward.call, static_argnums=0)  # eager calls would dispatch op by op
_draft_log_probs = jax.jit(
    lambda model, params, state, k, temperature: drafts.draft_log_probs(
        sampling.ModelNetwork(model), params, state.replace(temperature=jnp.float32(temperature)),
        k), static_argnums=(0, 3, 4))
_density = jax.jit(density.log_prob, static_argnums=0,
                   static_argnames=("temperature", "independent"))


def test_first_draft_marginal_is_the_density_conditional(trained):
  model, params = trained
  rng_tokens, rng_order = jax.random.split(jax.random.key(3))
  tokens = jax.random.randint(rng_tokens, (4, LENGTH), NUM_SPECIAL, NUM_SPECIAL + VOCAB)
  visible = jnp.asarray([[1, 0, 0, 0, 0, 0], [0, 1, 0, 1, 0, 0], [0, 0, 0, 0, 0, 1],
                         [1, 1, 0, 0, 1, 0]], bool)
  order = sampling.random_order(rng_order, tokens.shape)
  length = jnp.full((4,), LENGTH, jnp.int32)
  expected = _density(model, params, tokens, visible, order, temperature=0.8)
  independent = _density(model, params, tokens, visible, order, temperature=0.8,
                         independent=True)
  state = state_lib.init_state(tokens, visible, order, length, jax.random.key(0))
  gather = lambda x_BxR, index_BxK: jnp.take_along_axis(x_BxR, index_BxK, 1)
  for n in range(1, LENGTH):  # Row 0 of the draft call at pointer n is the conditional of rank n.
    state_n = state.replace(num_decoded_B=jnp.maximum(state.num_visible_B, n))
    rank_Bx1 = state_n.num_decoded_B[:, None]
    logq_BxV = _draft_log_probs(model, params, state_n, LENGTH, 0.8)[:, 0]
    draft_Bx1 = gather(logq_BxV, gather(state.tokens_rank_BxL, rank_Bx1))
    np.testing.assert_allclose(draft_Bx1, gather(expected, gather(state.perm_BxL, rank_Bx1)),
                               atol=1e-5)
  # At n = m every draft row is the prompt-only marginal of its rank.
  logq_BxKxV = _draft_log_probs(model, params, state, LENGTH, 0.8)
  rank_BxK = state.num_visible_B[:, None] + jnp.arange(LENGTH)
  valid_BxK = rank_BxK < LENGTH
  rank_BxK = jnp.minimum(rank_BxK, LENGTH - 1)
  draft_BxK = jnp.take_along_axis(logq_BxKxV, gather(state.tokens_rank_BxL, rank_BxK)[..., None],
                                  -1)[..., 0]
  marginal_BxK = gather(independent, gather(state.perm_BxL, rank_BxK))
  np.testing.assert_allclose(np.where(valid_BxK, draft_BxK, 0),
                             np.where(valid_BxK, marginal_BxK, 0), atol=1e-5)


@pytest.mark.parametrize("causal_prompt", [False, True])
def test_cached_and_uncached_logits_agree(trained, causal_prompt):
  """A prefill over every rank (garbage past the prompt), then one content row per call, gives
  the logits of full recomputation, for draft rows at every pointer."""
  model, params = trained
  model = model.clone(causal_prompt=causal_prompt)
  rs = np.random.default_rng(0)
  batch, m = 3, 2
  tokens_rank = jnp.asarray(rs.integers(NUM_SPECIAL, NUM_SPECIAL + VOCAB, (batch, LENGTH)),
                            jnp.int32)
  perm = jnp.asarray(np.stack([rs.permutation(LENGTH) for _ in range(batch)]), jnp.int32)
  num_visible = jnp.full((batch,), m, jnp.int32)
  garbage = tokens_rank.at[:, m:].set(NUM_SPECIAL)
  rank = lambda first, num: jnp.full((batch, 1), first, jnp.int32) + jnp.arange(num)
  _, cache = _call(model, params, garbage, perm, num_visible, rank(m, 2),
                          jnp.ones((batch, 2), bool), jnp.full((batch,), m), cache=model.init_cache(
                              batch, LENGTH), content_rank_BxR=rank(0, LENGTH))
  for n in range(m, LENGTH):
    if n > m:  # cache the content of rank n - 1, committed last
      _, cache = _call(model, params, tokens_rank, perm, num_visible, rank(n, 1),
                              jnp.ones((batch, 1), bool), jnp.full((batch,), n), cache=cache,
                              content_rank_BxR=rank(n - 1, 1))
    targets = rank(n, LENGTH - n)
    valid = jnp.ones_like(targets, bool)
    full = _call(model, params, tokens_rank, perm, num_visible, targets, valid,
                        jnp.full((batch,), n))
    cached, _ = _call(model, params, tokens_rank, perm, num_visible, targets, valid,
                             jnp.full((batch,), n), cache=cache, content_rank_BxR=rank(n, 0))
    np.testing.assert_allclose(np.asarray(cached), np.asarray(full), atol=1e-5, rtol=1e-5)


def test_one_trace_per_shape_and_same_rng_same_output(trained, monkeypatch):
  model, params = trained
  traces = []
  loop = core._loop
  monkeypatch.setattr(core, "_loop", lambda *args: traces.append(1) or loop(*args))
  core.clear_compiled()
  tokens = np.asarray([[4, 5, 6, 7, 8, 9], [9, 8, 7, 6, 5, 4], [6, 6, 6, 6, 6, 6]], np.int32)
  reverse = np.tile(np.arange(LENGTH)[::-1], (3, 1)).astype(np.float32)
  prompts = [  # (tokens, visible, order, length): prompts, visible counts, orders, lengths differ.
      (tokens, tokens < 6, None, None),
      (tokens[::-1], tokens > 7, sampling.random_order(jax.random.key(1), (3, LENGTH)),
       np.asarray([6, 4, 5], np.int32)),
      (np.roll(tokens, 1, 1), np.eye(3, LENGTH, dtype=bool), reverse,
       np.asarray([2, 6, 3], np.int32)),
  ]
  run = lambda prompt, seed: sampling.generate(
      model, params, prompt[0], prompt[1], jax.random.key(seed), method="assd", k=2,
      order_BxL=prompt[2], length_B=prompt[3])
  results = [run(prompt, 4) for prompt in prompts]
  assert len(traces) == 1
  again, other_rng = run(prompts[2], 4), run(prompts[2], 5)
  np.testing.assert_array_equal(again.tokens_BxL, results[2].tokens_BxL)
  np.testing.assert_array_equal(again.num_calls_B, results[2].num_calls_B)
  assert (np.asarray(other_rng.tokens_BxL) != np.asarray(results[2].tokens_BxL)).any()
  assert len(traces) == 1


def test_padding_values_do_not_change_real_logits(trained):
  model, params = trained
  tokens = jnp.asarray([[5, 6, 7, 8, 1, 2]] * 3)
  tokens_other_pad = tokens.at[:, 4:].set(jnp.asarray([9, 4]))
  visible = jnp.asarray([[1, 0, 0, 0, 1, 1], [0, 1, 0, 0, 0, 0], [0, 0, 1, 0, 1, 0]], bool)
  order = sampling.random_order(jax.random.key(5), tokens.shape)
  length = jnp.asarray([4, 4, 4])  # padding marked visible in rows 0 and 2: still padding.
  states = [state_lib.init_state(t, visible, order, length, jax.random.key(0))
            for t in (tokens, tokens_other_pad)]
  np.testing.assert_array_equal(states[0].num_target_B, [4, 4, 4])
  for n in (1, 2, 3):
    logq = [_draft_log_probs(model, params, s.replace(num_decoded_B=jnp.full((3,), n)), 3, 1.0)
            for s in states]
    np.testing.assert_allclose(logq[0], logq[1], atol=1e-6)
  outs = [sampling.generate(model, params, t, visible, jax.random.key(1), method="assd", k=2,
                            order_BxL=order, length_B=length) for t in (tokens, tokens_other_pad)]
  np.testing.assert_array_equal(outs[0].tokens_BxL[:, :4], outs[1].tokens_BxL[:, :4])
  np.testing.assert_array_equal(outs[1].tokens_BxL[:, 4:], tokens_other_pad[:, 4:])
  np.testing.assert_array_equal(outs[0].num_generated_B, [3, 3, 3])


def test_invalid_arguments_raise(trained):
  model, params = trained
  tokens, visible = np.full((2, 4), 5, np.int32), np.zeros((2, 4), bool)
  bad = [
      dict(method="beam"), dict(k=0), dict(k=2.0), dict(temperature=-0.5),
      dict(temperature=float("nan")), dict(depth=0, method="tree"), dict(ngram=-1),
      dict(k=65, method="tree"),
      dict(tokens_BxL=tokens.astype(np.float32)), dict(visible_BxL=visible.astype(np.int32)),
      dict(visible_BxL=visible[:, :3]), dict(tokens_BxL=tokens[0]),
      dict(order_BxL=np.zeros((2, 3))), dict(length_B=np.zeros((2, 1), np.int32)),
      dict(length_B=np.zeros((2,), np.float32)),
  ]
  for change in bad:
    kwargs = dict(tokens_BxL=tokens, visible_BxL=visible, rng=jax.random.key(0)) | change
    with pytest.raises(ValueError, match=next(iter(change))):
      sampling.generate(model, params, **kwargs)


def _subsample(rows_per_group: int):
  """``rows_per_group`` rows of every group of :func:`_batch` (group ``g`` first)."""
  return tuple(x[::ROWS_PER_GROUP // rows_per_group] for x in batch())


def test_greedy_decoding_is_sequential_greedy(trained):
  """temperature=0: every exact method returns sequential greedy decoding's tokens for any
  rng, a row decoded alone the same tokens as among rows of other lengths, orders and prompts,
  and each generated token is the arg-max of its conditional under the density."""
  model, params = trained
  tokens, visible, order, lengths = _subsample(20)
  run = lambda method, k, seed, rows=slice(None), **kw: np.asarray(sampling.generate(
      model, params, tokens[rows], visible[rows], jax.random.key(seed), method=method, k=k,
      temperature=0.0, order_BxL=order[rows], length_B=lengths[rows], **kw).tokens_BxL)
  greedy = run("sequential", 1, 0)
  for method, k, kw in [("sequential", 1, {}), ("assd", 3, {}), ("assd_fused", 3, {}),
                        ("tree", 7, dict(depth=3, ngram=1)),
                        ("tree", 3, dict(depth=2, ngram=0, cache=False)), ("auto", 4, {})]:
    np.testing.assert_array_equal(run(method, k, 1, **kw), greedy, err_msg=method)
  for method, k, kw in [("sequential", 1, {}), ("tree", 7, dict(depth=3, ngram=1))]:
    for g in range(len(GROUPS)):  # batch 1 against the batch of every group
      row = slice(20 * g, 20 * g + 1)
      np.testing.assert_array_equal(run(method, k, 2, row, **kw), greedy[row],
                                    err_msg=f"{method}, row {20 * g} alone")
  for g, (_, _, length) in enumerate(GROUPS.values()):
    rows = slice(20 * g, 20 * (g + 1))
    logp = _density(model, params, jnp.asarray(greedy[rows, :length]),
                    jnp.asarray(visible[rows, :length]), jnp.asarray(order[rows, :length]),
                    temperature=0.0)
    np.testing.assert_array_equal(logp, 0.0)  # log 1: the arg-max everywhere


def _path(tree, b, node):
  """Tokens of ``node``'s path (root first) in row ``b`` of a tree (numpy arrays)."""
  path = []
  while node >= 0:
    path.insert(0, int(tree.tokens_BxN[b, node]))
    node = int(tree.parent_BxN[b, node])
  return path


_tree_init = jax.jit(tree_method.init, static_argnums=(0, 2, 4))
_tree_call = jax.jit(tree_method.call, static_argnums=(0, 2))
_tree_round = jax.jit(tree_method.round, static_argnums=(0, 2))


def _tree_start(net, params, num_nodes: int, depth: int, cache: bool, ngram: int = 1,
                seed: int = 0):
  """The spec and the state after the first tree call, on 4 rows of every group."""
  spec = sampling.SamplerSpec("tree", num_nodes=num_nodes, depth=depth, ngram=ngram)
  tokens, visible, order, lengths = (jnp.asarray(x) for x in _subsample(4))
  keys = jax.random.split(jax.random.key(seed), len(tokens))
  state = state_lib.init_state(tokens, visible, order, lengths, keys)
  return spec, _tree_init(net, params, spec, state, cache)


@pytest.mark.parametrize("cache", [True, False])
def test_tree_call_rows_are_exact_conditionals_of_each_path(trained, cache):
  """Tree attention: the row of node u for rank t equals a plain call on the sequence with
  u's path written at its ranks (density rule for the exact row, draft rule beyond it)."""
  model, params = trained
  net, num_nodes, depth = sampling.ModelNetwork(model), 5, 3
  spec, state = _tree_start(net, params, num_nodes, depth, cache)
  batch = state.tokens_rank_BxL.shape[0]
  logits = np.asarray(_tree_call(net, params, spec, state)[0])
  tree = jax.tree.map(np.asarray, state.carry)
  n, num_target = np.asarray(state.num_decoded_B), np.asarray(state.num_target_B)
  checked = 0
  for node in range(-1, num_nodes):
    paths = [_path(tree, b, node) if node < 0 or tree.valid_BxN[b, node] else [] for b in
             range(batch)]
    tokens_rank = np.array(state.tokens_rank_BxL)
    for b, path in enumerate(paths):
      tokens_rank[b, n[b]:n[b] + len(path)] = path
    first = n + np.asarray([len(p) for p in paths])
    targets = first[:, None] + np.arange(depth + 1)
    want = _call(model, params, jnp.asarray(tokens_rank), state.perm_BxL,
                        state.num_visible_B, jnp.asarray(np.minimum(targets, LENGTH - 1)),
                        jnp.ones(targets.shape, bool), jnp.asarray(first))
    use = (targets < num_target[:, None]) & np.asarray(
        [node < 0 or tree.valid_BxN[b, node] for b in range(batch)])[:, None]
    np.testing.assert_allclose(logits[:, node + 1][use], np.asarray(want)[use], atol=1e-5)
    checked += use.sum()
  assert checked > 3 * batch


def test_tree_cache_holds_exactly_the_committed_content(trained):
  """After tree rounds, cached slots ``< num_cached`` equal a fresh computation of the
  committed tokens: the walked path is adopted and no off-path node is left in them."""
  model, params = trained
  net = sampling.ModelNetwork(model)
  spec, state = _tree_start(net, params, 7, 3, True)
  batch = state.tokens_rank_BxL.shape[0]
  for _ in range(2):
    state = _tree_round(net, params, spec, state)
  _, fresh = _call(model, params, state.tokens_rank_BxL, state.perm_BxL,
                          state.num_visible_B, state.num_decoded_B[:, None],
                          jnp.zeros((batch, 1), bool), state.num_decoded_B,
                          cache=model.init_cache(batch, LENGTH),
                          content_rank_BxR=jnp.broadcast_to(jnp.arange(LENGTH), (batch, LENGTH)))
  cached = np.arange(LENGTH)[None] < np.asarray(state.num_cached_B)[:, None]
  assert cached.sum() > np.asarray(state.num_visible_B).sum() + batch  # paths were adopted
  for got, want in zip(state.cache.layers, fresh.layers):
    for x, y in ((got.key, want.key), (got.value, want.value)):
      np.testing.assert_allclose(np.asarray(x)[:, :LENGTH][cached], np.asarray(y)[cached],
                                 atol=1e-5)


def test_prompt_round_trip():
  tok = CharTokenizer()
  text = "ab<mask:2>cde<mask:3>f"
  tokens, visible = sampling.parse(text, tok)
  assert tokens.dtype == np.int32 and visible.dtype == np.bool_
  np.testing.assert_array_equal(visible, [1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 1])
  assert tok.decode(tokens[visible].tolist()) == "abcdef"
  assert (tokens[~visible] == tok.mask_id).all()
  assert sampling.render(tokens, visible, tok) == text


@pytest.mark.parametrize("text", ["<mask:x>", "a<mask:0>", "<mask:-1>", "<mask:3", "<mask:>",
                                  "<mask:1.5>b", "<mask: 2>", "<mask:2><mask:"])
def test_malformed_prompts_raise(text):
  with pytest.raises(sampling.PromptError) as err:
    sampling.parse(text, CharTokenizer())
  assert "\n" not in str(err.value)


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.lists(st.sampled_from(["<mask:", ">", "3", "0", "-", "x", "<", "mask",
                                            ":", "\n", "é", "<mask:2>"]) | st.text(max_size=3),
                           max_size=8).map("".join))
def test_fuzz_prompts_parse_or_raise_prompt_error(text):
  tok = CharTokenizer()
  try:
    tokens, visible = sampling.parse(text, tok)
  except sampling.PromptError as err:
    assert "\n" not in str(err)
    return
  again = sampling.parse(sampling.render(tokens, visible, tok), tok)
  np.testing.assert_array_equal(again[1], visible)
  np.testing.assert_array_equal(again[0][visible], tokens[visible])


class ToyTokenizer:
  """Letters a-f are the model's samplable ids 4-9."""
  mask_id, pad_id = 3, 0

  def encode(self, text):
    return [ord(c) - ord("a") + NUM_SPECIAL for c in text]

  def decode(self, ids):
    return "".join(chr(i - NUM_SPECIAL + ord("a")) for i in ids)


def test_sample_text(trained):
  model, params = trained
  texts = ["ab<mask:3>", "<mask:2>cd<mask:1>f", "<mask:1>"]
  out = sampling.sample_text(model, params, ToyTokenizer(), texts, jax.random.key(0),
                             method="assd", k=2, temperature=1.0, length=LENGTH)
  for text, result in zip(texts, out):
    prompt = text.split("<")[0]
    assert result["text"].startswith(prompt) and set(result["text"]) <= set("abcdef")
    assert len(result["text"]) == len(sampling.parse(text, ToyTokenizer())[0])
  assert [r["num_generated"] for r in out] == [3, 3, 1]
  assert all(1 <= r["num_calls"] <= r["num_generated"] for r in out)
  assert out[0]["tokens_per_call"] == 3 / out[0]["num_calls"]
  with pytest.raises(sampling.PromptError):
    sampling.sample_text(model, params, ToyTokenizer(), ["abcdefg"], jax.random.key(0),
                         length=LENGTH)


class _RoundedCacheNetwork(sampling.ModelNetwork):
  """A network whose caches have spare slots past those asked for (as the fused kernel's
  whole key blocks give)."""

  def init_cache(self, batch, num_slots):
    return self.model.init_cache(batch, num_slots + 70)


def test_spare_cache_slots_change_nothing(trained):
  """Slots past ``L + N`` have no rank and hold no node: with 70 spare slots, the prefill and
  a call of a 40-node tree (node bits in both words) give the same logits. (Uncached calls
  make the same kind of cache, and forward.call treats both alike.)"""
  model, params = trained
  logits = []
  for net in (sampling.ModelNetwork(model), _RoundedCacheNetwork(model)):
    spec, state = _tree_start(net, params, 40, 2, True, ngram=0, seed=4)
    logits.append(np.asarray(_tree_call(net, params, spec, state)[0]))
  assert np.asarray(state.carry.valid_BxN)[:, 32:].any()  # nodes in the second word
  np.testing.assert_allclose(logits[0], logits[1], atol=1e-5)  # float32, other slot counts
