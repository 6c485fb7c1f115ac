"""LayerNorm modules with ``nn.LayerNorm``'s parameters (``scale``, ``bias``) and function:
float32 statistics, ``var = E[x^2] - E[x]^2`` clipped at 0, ``(x - mean) * (rsqrt(var + eps) *
scale) + bias``.

* :class:`LayerNorm`, the model's: its forward is ``nn.LayerNorm``'s, bit for bit; its backward
  is written out (:func:`layer_norm`), saving the input and two floats a row. XLA's autodiff of
  ``nn.LayerNorm`` saved a float32 copy of every input for the backward and ran the
  derivative as several passes over the rows.
* :class:`InvariantLayerNorm`, for batch-invariant decoding: its row sums by
  :func:`invariant_matmul.row_sum` (XLA's reductions may round a row differently per shape).
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from asarm_jax.models import invariant_matmul

Array = jax.Array
EPSILON = 1e-6  # nn.LayerNorm's


def _normalize(x_NxD, mean_Nx1, var_Nx1, scale_D, bias_D, epsilon, dtype):
  """``nn.LayerNorm``'s normalisation, in its order of operations (float32)."""
  inverse_Nx1 = jax.lax.rsqrt(var_Nx1 + epsilon)
  return ((x_NxD - mean_Nx1) * (inverse_Nx1 * scale_D) + bias_D).astype(dtype), inverse_Nx1


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x_BxTxD: Array, scale_D: Array, bias_D: Array, epsilon: float, dtype: Any) -> Array:
  """``nn.LayerNorm`` over the last axis, in ``dtype``; the gradient written out."""
  return _layer_norm_fwd(x_BxTxD, scale_D, bias_D, epsilon, dtype)[0]


def _layer_norm_fwd(x_BxTxD, scale_D, bias_D, epsilon, dtype):
  x_BxTxD32 = x_BxTxD.astype(jnp.float32)
  mean, square = (jnp.mean(v, -1, keepdims=True) for v in (x_BxTxD32, jnp.square(x_BxTxD32)))
  var = jnp.maximum(0.0, square - jnp.square(mean))
  y, inverse = _normalize(x_BxTxD32, mean, var, scale_D.astype(jnp.float32),
                          bias_D.astype(jnp.float32), epsilon, dtype)
  return y, (x_BxTxD, scale_D, bias_D, mean, inverse)


def _layer_norm_bwd(epsilon, dtype, residuals, dy_BxTxD):
  """With ``xhat = (x - mean) * inverse`` and ``g = dy * scale``: ``dx = inverse (g - mean(g) -
  xhat mean(g xhat))``, ``dscale = sum(dy xhat)``, ``dbias = sum(dy)`` over the rows."""
  del epsilon, dtype
  x_BxTxD, scale_D, bias_D, mean, inverse = residuals
  dy = dy_BxTxD.astype(jnp.float32)
  xhat = (x_BxTxD.astype(jnp.float32) - mean) * inverse
  g = dy * scale_D.astype(jnp.float32)
  dx = inverse * (g - jnp.mean(g, -1, keepdims=True)
                  - xhat * jnp.mean(g * xhat, -1, keepdims=True))
  rows = tuple(range(dy.ndim - 1))
  return (dx.astype(x_BxTxD.dtype), jnp.sum(dy * xhat, rows).astype(scale_D.dtype),
          jnp.sum(dy, rows).astype(bias_D.dtype))


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)


class _Norm(nn.Module):
  """``nn.LayerNorm``'s parameters."""
  dtype: Any
  param_dtype: Any
  epsilon: float = EPSILON

  def params_of(self, width: int) -> tuple[Array, Array]:
    return (self.param("scale", nn.initializers.ones, (width,), self.param_dtype),
            self.param("bias", nn.initializers.zeros, (width,), self.param_dtype))


class LayerNorm(_Norm):
  """``nn.LayerNorm`` (the same parameters and forward bits) with :func:`layer_norm`'s
  backward."""

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> Array:
    return layer_norm(x_BxTxD, *self.params_of(x_BxTxD.shape[-1]), self.epsilon, self.dtype)


class InvariantLayerNorm(_Norm):
  """``nn.LayerNorm``'s function, its row sums by :func:`invariant_matmul.row_sum`."""

  @nn.compact
  def __call__(self, x_BxTxD: Array) -> Array:
    width = x_BxTxD.shape[-1]
    scale_D, bias_D = self.params_of(width)
    x_NxD = x_BxTxD.reshape(-1, width).astype(jnp.float32)
    sums_2N = invariant_matmul.row_sum(jnp.concatenate([x_NxD, x_NxD * x_NxD]))
    mean_Nx1, square_Nx1 = jnp.split(sums_2N[:, None] / width, 2)
    var_Nx1 = jnp.maximum(0.0, square_Nx1 - mean_Nx1 * mean_Nx1)
    y_NxD, _ = _normalize(x_NxD, mean_Nx1, var_Nx1, scale_D, bias_D, self.epsilon, self.dtype)
    return y_NxD.reshape(x_BxTxD.shape)
