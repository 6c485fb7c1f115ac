"""Prompt groups, sampler runs and the chi-square test shared by the exactness tests.

Each group is a small prompt (visible tokens by position, an order seed or left to right, a
real length) repeated ``ROWS_PER_GROUP`` times in one batch; the samples of its hidden
positions are compared with the exact joint of all ``VOCAB^h`` completions (Pearson's
chi-square, cells with expected count < 5 pooled, level fixed in advance at ``ALPHA``).
"""
from __future__ import annotations

import jax
import numpy as np
import scipy.stats

from asarm_jax import sampling

NUM_SPECIAL, VOCAB, LENGTH = 4, 6, 6  # 6 samplable ids [4, 10).
ALPHA = 1e-3
ROWS_PER_GROUP = 10_000
PAD_TOKEN = 9

# Prompt groups sharing one batch: (visible tokens by position, order seed or None, length).
GROUPS = {
    "left_to_right": ({0: 4, 1: 5}, None, LENGTH),
    "infill": ({0: 7, 3: 4}, None, LENGTH),
    "random_order_a": ({1: 9, 4: 6, 5: 7}, 11, LENGTH),
    "random_order_b": ({2: 5, 5: 8}, 12, LENGTH),
    "padded": ({0: 6}, None, 5),  # position 5 is padding.
}

RUNS = {  # name: (method, k, temperature, cache, extra generate() arguments)
    "sequential": ("sequential", 1, 1.0, True, {}),
    "sequential_nocache": ("sequential", 1, 1.0, False, {}),
    "assd_k2": ("assd", 2, 1.0, True, {}),
    "assd_k3": ("assd", 3, 1.0, True, {}),
    "assd_k3_nocache": ("assd", 3, 1.0, False, {}),
    "assd_k3_t0.7": ("assd", 3, 0.7, True, {}),
    "assd_fused_k2": ("assd_fused", 2, 1.0, True, {}),
    "assd_fused_k3": ("assd_fused", 3, 1.0, True, {}),
    "assd_fused_k3_nocache": ("assd_fused", 3, 1.0, False, {}),
    "assd_fused_k3_t0.7": ("assd_fused", 3, 0.7, True, {}),
    # Tree decoding: node budgets 1, 3 and 7, prompt lookup on and off, cache on and off.
    "tree_n1": ("tree", 1, 1.0, True, dict(depth=3, ngram=0)),
    "tree_n3_t0.5": ("tree", 3, 0.5, True, dict(depth=3, ngram=0)),
    "tree_n7_ngram": ("tree", 7, 1.0, True, dict(depth=3, ngram=1)),
    "tree_n7_ngram_nocache": ("tree", 7, 1.0, False, dict(depth=3, ngram=1)),
    "parallel_k3": ("parallel", 3, 1.0, True, {}),
    # auto: the draft size (1 to 4) chosen per row and round (calls as the cost, no file).
    "auto_k4": ("auto", 4, 1.0, True, {}),
    "auto_k4_t0.5_nocache": ("auto", 4, 0.5, False, {}),
}
TEMPERATURES = tuple(sorted({run[2] for run in RUNS.values()}))


def group_arrays(visible_tokens: dict, order_seed: int | None, length: int):
  """One row of a group: tokens, visible, order (``1 x LENGTH``)."""
  tokens = np.full((1, LENGTH), NUM_SPECIAL, np.int32)
  tokens[0, length:] = PAD_TOKEN
  visible = np.zeros((1, LENGTH), bool)
  for pos, tok in visible_tokens.items():
    tokens[0, pos], visible[0, pos] = tok, True
  order = (np.zeros((1, LENGTH), np.float32) if order_seed is None else
           np.asarray(sampling.random_order(jax.random.key(order_seed), (1, LENGTH))))
  return tokens, visible, order


def hidden(visible_tokens: dict, length: int) -> list[int]:
  """The group's hidden positions, in position order."""
  return [i for i in range(length) if i not in visible_tokens]


def hidden_in_order(group) -> list[int]:
  """The group's hidden positions in generation order (order keys, ties by position)."""
  visible_tokens, _, length = group
  order = group_arrays(*group)[2][0]
  return sorted(hidden(visible_tokens, length), key=lambda i: (order[i], i))


def batch(rows_per_group: int = ROWS_PER_GROUP):
  """All groups stacked, ``rows_per_group`` rows each: tokens, visible, order, lengths."""
  parts = [group_arrays(*group) for group in GROUPS.values()]
  tokens, visible, order = (np.repeat(np.concatenate(p), rows_per_group, 0) for p in zip(*parts))
  lengths = np.repeat([group[2] for group in GROUPS.values()], rows_per_group).astype(np.int32)
  return tokens, visible, order, lengths


def group_rows(name: str, rows_per_group: int = ROWS_PER_GROUP) -> slice:
  g = list(GROUPS).index(name)
  return slice(g * rows_per_group, (g + 1) * rows_per_group)


def generate_run(model, params, run: str, seed: int):
  """One ``generate`` call of ``RUNS[run]`` over every group (numpy outputs)."""
  method, k, temperature, cache, extra = RUNS[run]
  tokens, visible, order, lengths = batch()
  gen = sampling.generate(model, params, tokens, visible, jax.random.key(seed), method=method,
                          k=k, temperature=temperature, order_BxL=order, length_B=lengths,
                          cache=cache, **extra)
  return jax.tree.map(np.asarray, gen)


def cells(tokens_NxL: np.ndarray, visible_tokens: dict, length: int) -> np.ndarray:
  """Cell index of each sample: its hidden tokens read as a base-VOCAB number."""
  digits = tokens_NxL[:, hidden(visible_tokens, length)] - NUM_SPECIAL
  assert digits.min() >= 0 and digits.max() < VOCAB
  return digits @ (VOCAB ** np.arange(digits.shape[1])[::-1])


def chi_square(cells_N: np.ndarray, probs_C: np.ndarray) -> tuple[float, int, float]:
  """Pearson goodness of fit; cells with expected count < 5 are pooled (smallest first)."""
  observed = np.bincount(cells_N, minlength=len(probs_C))
  expected = len(cells_N) * probs_C
  order = np.argsort(expected)
  observed, expected = observed[order], expected[order]
  cut = int((expected < 5).sum())
  while 0 < cut < len(expected) and expected[:cut].sum() < 5:
    cut += 1
  if cut:
    observed = np.r_[observed[:cut].sum(), observed[cut:]]
    expected = np.r_[expected[:cut].sum(), expected[cut:]]
  stat = float(((observed - expected) ** 2 / expected).sum())
  dof = len(expected) - 1
  return stat, dof, float(scipy.stats.chi2.sf(stat, dof))


def p_values(gen, joints: dict) -> dict[str, float]:
  """The chi-square p-value of every group's samples against ``joints[group]``."""
  out = {}
  for name, (visible_tokens, _, length) in GROUPS.items():
    found = cells(gen.tokens_BxL[group_rows(name)], visible_tokens, length)
    stat, dof, out[name] = chi_square(found, joints[name])
    print(f"{name:>15}: chi2={stat:8.1f} dof={dof:4d} p={out[name]:.3g}")
  return out


def check_prompt_padding_and_calls(gen, run: str) -> None:
  """The prompt and padding are returned unchanged, every hidden position gets a samplable
  token, and every row spends between 1 and (its hidden count) calls."""
  tokens, visible, _, lengths = batch()
  kept = visible | (np.arange(LENGTH) >= lengths[:, None])
  hidden_count = LENGTH - kept.sum(-1)
  np.testing.assert_array_equal(gen.tokens_BxL[kept], tokens[kept])
  assert (gen.tokens_BxL[~kept] >= NUM_SPECIAL).all()
  np.testing.assert_array_equal(gen.num_generated_B, hidden_count)
  assert (gen.num_calls_B <= gen.num_generated_B).all(), run
  assert (gen.num_calls_B >= 1).all()
  method, k = RUNS[run][:2]
  assert gen.num_calls_B.max() <= gen.num_network_calls  # a row counts only calls made
  if method == "sequential":
    np.testing.assert_array_equal(gen.num_calls_B, hidden_count)
    assert gen.num_network_calls == hidden_count.max() + 1  # the last round drafts for no row
  if method == "parallel":
    np.testing.assert_array_equal(gen.num_calls_B, -(-hidden_count // k))  # one per round
  print(f"{run}: tokens/call={hidden_count.sum() / gen.num_calls_B.sum():.3f}")
