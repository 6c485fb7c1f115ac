"""The xlnet arch against Hugging Face's XLNetLMHeadModel, through the converter.

tests/fixtures/hf_xlnet_tiny holds a small random HF checkpoint and HF's own logits for several
perm_mask / target_mapping inputs (tests/fixtures/make_hf_xlnet_fixture.py, run where torch and
transformers exist). Here nothing imports torch: the checkpoint is converted to a workdir
(vocabulary renumbered), loaded as any workdir, and called through ``forward.call``.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from asarm_jax import (config_base, convert, forward, inference, objectives, sampling, train,
                       validation)
from asarm_jax.forward import TreeRows
from tests.helpers import copy_stdlib_files, demo_config

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "hf_xlnet_tiny")
call = jax.jit(forward.call, static_argnums=0)  # one compile per shape, not one per op
CASES = ("prefix_lm", "infill", "draft", "random_order", "random_draft", "padding")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> str:
  path = str(tmp_path_factory.mktemp("xlnet_workdir"))
  convert.convert(FIXTURE, path, max_len=16)
  return path


@pytest.fixture(scope="module")
def loaded(workdir) -> inference.Loaded:
  return inference.load(workdir)


@pytest.fixture(scope="module")
def recorded() -> dict[str, np.ndarray]:
  with np.load(os.path.join(FIXTURE, "logits.npz")) as z:
    return dict(z)


def hf_order() -> np.ndarray:
  with open(os.path.join(FIXTURE, "spiece.model"), "rb") as f:
    return convert.vocab_order(f.read())[0]


@pytest.mark.parametrize("case", CASES)
def test_logits_equal_hf(loaded, recorded, case):
  """Our logits for HF's perm_mask/target_mapping inputs equal HF's, within 1e-4 (float32)."""
  get = lambda key: recorded[f"{case}/{key}"]
  order = hf_order()  # our id i is HF's id order[i]
  ours_of_hf = np.argsort(order)
  perm, valid = get("perm"), get("target_valid")
  tokens_rank = ours_of_hf[np.take_along_axis(get("tokens"), perm, 1)]
  logits = call(loaded.model, loaded.params, tokens_rank, perm, get("num_visible"),
                get("target_rank"), valid, get("num_decoded"))
  expected = get("logits")[..., order]
  assert valid.sum() >= 10
  np.testing.assert_allclose(np.asarray(logits)[valid], expected[valid], atol=1e-4, rtol=0)


def test_workdir_config_file_is_the_checkpoint_config(workdir, loaded):
  """WORKDIR/config.py (the --config of --mode=eval) has the checkpoint's model block, which the
  eval runner requires, and passes the config checks."""
  config = config_base.from_file(os.path.join(workdir, "config.py"))
  as_json = lambda c: json.loads(c.model.to_json_best_effort())
  assert as_json(config) == as_json(loaded.config)
  assert config.model.arch == "xlnet" and config.data.seq_len == 16
  config.sample.prompt = "The quick <mask:3> fox"
  validation.validate_config(config, "sample")
  validation.validate_config(config, "eval")


def test_converted_tokenizer_keeps_our_special_ids(loaded):
  tokenizer, model = loaded.tokenizer, loaded.model
  pieces = [tokenizer._sp.id_to_piece(i) for i in range(model.num_special_tokens)]  # pylint: disable=protected-access
  assert pieces[:4] == ["<pad>", "<unk>", "</s>", "<mask>"]
  assert set(pieces[4:]) == {"<s>", "<cls>", "<sep>", "<eod>", "<eop>"}
  ids = tokenizer.encode("The quick brown fox")
  assert min(ids) >= model.num_special_tokens
  assert tokenizer.decode(ids) == "The quick brown fox"


def _random_sequence(loaded, batch: int, length: int, seed: int):
  rs = np.random.default_rng(seed)
  vocab, special = loaded.model.vocab_size, loaded.model.num_special_tokens
  tokens = rs.integers(special, vocab, (batch, length)).astype(np.int32)
  perm = np.stack([rs.permutation(length) for _ in range(batch)]).astype(np.int32)
  return jnp.asarray(np.take_along_axis(tokens, perm, 1)), jnp.asarray(perm)


def test_cached_calls_equal_uncached(loaded):
  """Content written into the cache by an earlier call serves a later draft call: its logits
  equal the uncached call's."""
  model, params = loaded.model, loaded.params
  batch, length, visible, decoded = 2, 12, 3, 7
  tokens, perm = _random_sequence(loaded, batch, length, seed=1)
  num_visible = jnp.full((batch,), visible)
  targets = jnp.broadcast_to(jnp.arange(decoded, length), (batch, length - decoded))
  valid = jnp.ones(targets.shape, bool)
  expected = call(model, params, tokens, perm, num_visible, targets, valid,
                  jnp.full((batch,), decoded))
  cache = model.init_cache(batch, length)
  first = jnp.broadcast_to(jnp.arange(5), (batch, 5))
  _, cache = call(model, params, tokens, perm, num_visible, targets, valid,
                  jnp.full((batch,), 5), cache=cache, content_rank_BxR=first)
  rest = jnp.broadcast_to(jnp.arange(5, decoded), (batch, decoded - 5))
  logits, _ = call(model, params, tokens, perm, num_visible, targets, valid,
                   jnp.full((batch,), decoded), cache=cache, content_rank_BxR=rest)
  np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)


def test_tree_rows_in_extra_slots_equal_density(loaded):
  """A chain of tree nodes in cache slots >= L gives the sigma-causal density's logits."""
  model, params = loaded.model, loaded.params
  batch, length, visible, nodes = 2, 12, 4, 5
  tokens, perm = _random_sequence(loaded, batch, length, seed=2)
  num_visible = jnp.full((batch,), visible)
  targets = jnp.broadcast_to(jnp.arange(visible, visible + nodes), (batch, nodes))
  valid = jnp.ones(targets.shape, bool)
  expected = call(model, params, tokens, perm, num_visible, targets, valid)
  cache = model.init_cache(batch, length + nodes)
  prompt = jnp.broadcast_to(jnp.arange(visible), (batch, visible))
  _, cache = call(model, params, tokens, perm, num_visible, targets, valid, num_visible,
                  cache=cache, content_rank_BxR=prompt)
  node = jnp.arange(nodes)
  tree = TreeRows(tokens_BxN=tokens[:, visible:visible + nodes],
                  rank_BxN=jnp.broadcast_to(visible + node, (batch, nodes)),
                  ancestors_BxNxN=jnp.broadcast_to(node[None, :] <= node[:, None],
                                                   (batch, nodes, nodes)),
                  target_node_BxK=jnp.broadcast_to(node - 1, (batch, nodes)))
  none = jnp.full((batch, 1), length)  # no rank row: only the tree's rows are computed
  logits, _ = call(model, params, tokens, perm, num_visible, targets, valid, num_visible,
                   cache=cache, content_rank_BxR=none, tree=tree)
  np.testing.assert_allclose(logits, expected, atol=1e-5, rtol=0)


def test_greedy_tree_and_assd_decode_the_density_argmax(loaded):
  """At temperature 0 the cached tree and ASSD samplers return greedy left-to-right decoding:
  each generated token is the argmax (over non-special ids) of the uncached sigma-causal density
  given the prompt and the tokens before it. The prompt is kept; the tree saves calls."""
  model, params = loaded.model, loaded.params
  batch, length, special = 2, 12, model.num_special_tokens
  rs = np.random.default_rng(3)
  tokens = jnp.asarray(rs.integers(special, model.vocab_size, (batch, length)))
  visible = np.asarray(rs.random((batch, length)) < 0.3)
  visible[:, 0] = True
  runs = {method: sampling.generate(model, params, tokens, jnp.asarray(visible),
                                    jax.random.key(0), method=method, k=3, depth=3,
                                    temperature=0.0)
          for method in ("tree", "assd")}
  out = np.asarray(runs["tree"].tokens_BxL)
  np.testing.assert_array_equal(runs["assd"].tokens_BxL, out)
  np.testing.assert_array_equal(out[visible], np.asarray(tokens)[visible])
  # Rank order: the prompt, then the hidden positions left to right.
  perm = np.stack([np.concatenate([np.flatnonzero(v), np.flatnonzero(~v)]) for v in visible])
  num_visible = visible.sum(1)
  target_rank = num_visible[:, None] + np.arange(length - num_visible.min())
  logits = call(model, params, np.take_along_axis(out, perm, 1), perm, num_visible,
                np.minimum(target_rank, length - 1), target_rank < length)
  greedy = np.asarray(logits)[..., special:].argmax(-1) + special
  for b in range(batch):
    hidden = perm[b, num_visible[b]:]
    np.testing.assert_array_equal(out[b, hidden], greedy[b, :len(hidden)])
  assert int(runs["tree"].num_calls_B.max()) < int((~visible).sum(1).max())


def test_training_steps_lower_the_objective(loaded):
  """The trainer's objective (joint loss, draft term on) differentiates through the xlnet arch:
  a few Adam steps on one batch lower it."""
  objective = loaded.config.objective.copy_and_resolve_references()
  objective.draft_weight = 0.5
  loss_fn = objectives.from_config(loaded.model, objective)
  tokens = jnp.asarray(np.random.default_rng(4).integers(
      loaded.model.num_special_tokens, loaded.model.vocab_size, (4, 12)))
  rng = jax.random.key(5)
  tx = optax.adam(1e-2)
  params, opt_state = loaded.params, tx.init(loaded.params)
  grad_fn = jax.jit(jax.value_and_grad(lambda p: loss_fn(p, tokens, rng)[0]))
  first, _ = grad_fn(params)
  for _ in range(3):
    loss, grads = grad_fn(params)
    updates, opt_state = tx.update(grads, opt_state)
    params = optax.apply_updates(params, updates)
  assert np.isfinite(float(first)) and float(loss) < float(first) - 0.1


def test_pytorch_bin_reads_like_safetensors(tmp_path):
  """``pytorch_model.bin`` (the only format that needs torch) gives the same tensors."""
  torch = pytest.importorskip("torch")
  expected = convert.read_state_dict(FIXTURE)
  torch.save({k: torch.from_numpy(v).half() for k, v in expected.items()},
             tmp_path / "pytorch_model.bin")
  got = convert.read_state_dict(str(tmp_path))
  assert sorted(got) == sorted(expected)
  for name, value in expected.items():
    np.testing.assert_array_equal(got[name], value)


@pytest.mark.parametrize("key, value", [("attn_type", "uni"), ("bi_data", True), ("d_head", 4)])
def test_converter_refuses_settings_it_does_not_reproduce(key, value):
  with open(os.path.join(FIXTURE, "config.json"), encoding="utf-8") as f:
    hf = json.load(f)
  with pytest.raises(ValueError, match=key):
    convert.model_config(dict(hf, **{key: value}), 16, 9)


def test_converter_refuses_an_untied_head():
  state = convert.read_state_dict(FIXTURE)
  state["lm_loss.weight"] = state["transformer.word_embedding.weight"] + 1.0
  with pytest.raises(ValueError, match="untied"):
    convert.convert_params(state, 2)
  state["lm_loss.weight"] = state["transformer.word_embedding.weight"].copy()
  assert "embed" in convert.convert_params(state, 2)["params"]


def fine_tuning_config(tmp_path, **overrides):
  """configs/demo.py made to fit the fixture's network, on stdlib files, ``init_from`` it."""
  model_block, _, _ = convert.load(FIXTURE, 16)
  copy_stdlib_files(str(tmp_path / "src"), count=12)
  settings = {f"model.{k}": v for k, v in model_block.items() if k not in ("vocab_size", "max_len")}
  settings.update({
      "data.vocab_size": model_block["vocab_size"], "data.seq_len": 16,
      "data.source_dirs": (str(tmp_path / "src"),), "data.data_dir": str(tmp_path / "data"),
      "train.batch_size": 2, "train.num_steps": 1, "train.eval_batches": 0,
      "data.heldout_fraction": 0.3, "sample.num_examples": 0, "optim.learning_rate": 1e-12,
      "init_from": FIXTURE})
  settings.update(overrides)
  return demo_config(settings)


def test_fine_tuning_starts_from_the_hf_weights_and_tokenizer(tmp_path):
  """``init_from`` an HF folder: the run trains on text tokenized with the converted
  tokenizer and starts from the converted weights (one step at a negligible learning rate
  leaves them in place), and its checkpoint carries that tokenizer."""
  config = fine_tuning_config(tmp_path)
  validation.check_inputs(config)
  train.train_and_evaluate(config, str(tmp_path / "run"))
  run = inference.load(str(tmp_path / "run"))
  _, params, spiece = convert.load(FIXTURE, 16)
  assert run.step == 1 and run.tokenizer.serialized() == spiece
  for got, want in zip(jax.tree_util.tree_leaves(run.params), jax.tree_util.tree_leaves(params)):
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_init_from_refuses_weights_that_do_not_fit(tmp_path):
  config = fine_tuning_config(tmp_path, **{"model.num_layers": 1})
  with pytest.raises(ValueError, match=r"init_from=.*do not fit config.model: .*block_1"):
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints" / "0")


def test_init_from_must_name_a_workdir_or_hf_folder(tmp_path):
  config = fine_tuning_config(tmp_path, init_from=str(tmp_path))
  with pytest.raises(ValueError, match=r"init_from=.*expected a workdir"):
    validation.check_inputs(config)
