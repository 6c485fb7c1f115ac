"""Honest FLOP counts for the two-stream transformer, for MFU."""
from __future__ import annotations

import jax
import ml_collections

# Dense bf16 peak per chip, by `device_kind` prefix.
PEAK_FLOPS = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
              "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5": 459e12, "TPU v6": 918e12}


def train_flops_per_token(model: ml_collections.ConfigDict, seq_len: int) -> float:
  """Matmul FLOPs of one training token (forward + backward = 3x forward).

  Each position is a content row *and* a query row: both run q/o projections, the MLP and
  attention over ``seq_len`` keys; k/v are projected for content rows only; the output head runs
  on query rows only.
  """
  d, f, layers = model.d_model, model.d_ff, model.num_layers
  mac = 2  # FLOPs per multiply-accumulate
  per_layer = mac * (2 * (2 * d * d)        # q and o projections, both streams
                     + 2 * d * d            # k and v projections, content stream only
                     + 2 * (2 * d * f)      # MLP in and out, both streams
                     + 2 * (2 * seq_len * d))  # scores and weighted values over all keys, both
  forward = layers * per_layer + mac * d * model.vocab_size  # head on query rows
  return 3.0 * forward


def peak_flops_per_device() -> float | None:
  kind = jax.devices()[0].device_kind
  return next((v for k, v in PEAK_FLOPS.items() if kind.startswith(k)), None)
