"""The one flag style of the benchmarks: argparse, ``--name=value``, lists comma-separated."""
from __future__ import annotations

import argparse
from typing import Callable, TypeVar

from asarm_jax.sampling.spec import SamplerSpec

T = TypeVar("T")


def list_of(kind: Callable[[str], T]) -> Callable[[str], list[T]]:
  """An argparse ``type`` for a comma-separated list, e.g. ``--batches=1,64``."""
  def parse(text: str) -> list[T]:
    return [kind(item) for item in text.split(",") if item]
  parse.__name__ = f"list of {getattr(kind, '__name__', 'values')}"
  return parse


def pair(text: str) -> tuple[int, int]:
  """``"64:36"`` -> ``(64, 36)``: a ``batch:rows`` shape."""
  first, second = text.split(":")
  return int(first), int(second)


def flag_bool(text: str) -> bool:
  """``--flag=true`` / ``--flag=false``."""
  if text.lower() not in ("true", "false", "1", "0"):
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")
  return text.lower() in ("true", "1")


def parse_spec(text: str, depth: int = 6, ngram: int = 2) -> SamplerSpec:
  """A sampler written ``method[:k]``, ``auto:k:batch`` (one draft size per batch), or
  ``tree:N[:D]`` (node budget N, depth D, else ``depth``), as a spec; e.g. ``sequential``,
  ``assd_fused:5``, ``tree:8``, ``tree:4:2``."""
  method, *sizes = text.split(":")
  size_choice = sizes.pop() if method == "auto" and sizes[-1:] == ["batch"] else "row"
  if len(sizes) > (2 if method == "tree" else 1) or not all(s.isdigit() for s in sizes):
    raise ValueError(f"bad sampler {text!r}: METHOD[:K], auto:K:batch, or tree:N[:D]")
  if method == "tree":
    return SamplerSpec(method="tree", num_nodes=int(sizes[0]) if sizes else 8,
                       depth=int(sizes[1]) if len(sizes) > 1 else depth, ngram=ngram)
  return SamplerSpec(method=method, k=int(sizes[0]) if sizes else 1, size_choice=size_choice)


def spec_settings(spec: SamplerSpec) -> dict:
  """The fields of ``spec`` that its method uses: a record's settings."""
  size = {"tree": dict(num_nodes=spec.num_nodes, depth=spec.depth, ngram=spec.ngram),
          "sequential": {}, "auto": dict(k=spec.k, size_choice=spec.size_choice)
          }.get(spec.method, dict(k=spec.k))
  return {"method": spec.method, **size, "temperature": spec.temperature}


def add_decode_cases(parser: argparse.ArgumentParser) -> None:
  """The flags of a benchmark over decoding cases of a config's model: ``--config``,
  ``--specs``, ``--batches``, ``--length`` and ``--deterministic``."""
  parser.add_argument("--config", default="xlnet_base", help="configs/ name")
  parser.add_argument("--specs", type=list_of(str),
                      default="sequential,assd:5,assd_fused:5,tree:4:2,tree:8:6",
                      help="samplers: method[:k] or tree:N[:D]")
  parser.add_argument("--batches", type=list_of(int), default="1,64", help="batch sizes")
  parser.add_argument("--length", type=int, default=0,
                      help="tokens per row; 0: the model's maximum (data.seq_len)")
  parser.add_argument("--deterministic", type=flag_bool, default=False,
                      help="the batch-invariant network (deterministic decoding)")
