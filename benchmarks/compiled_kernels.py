"""The kernels of each decoder's round, from its sampling loop compiled for a GPU: with one
attached or, on any machine, for a GPU described in a file.

  python -m benchmarks compiled_kernels --config=xlnet_base \
      [--specs=sequential,assd:5,assd_fused:5,tree:4:2,tree:8:6] [--batches=1,64] \
      [--target=benchmarks/gpu_target.txtpb] [--deterministic=true]

A decoding call at batch 1 is launch-bound: on the H200 (2026-12-05, ``decode_profile``) a
sequential call launched about 270 kernels of a few microseconds each in its 0.63 ms. Which
kernels a call launches is fixed when XLA compiles the loop, so it can be counted without
running it. For every sampler of ``--specs`` and batch of ``--batches`` this compiles
``sampling.generate``'s loop (``sampling.core.sampling_loop`` with
``sampling.core.compiler_options``: the real program, the same arguments' shapes as
``decode_profile``'s, ``--length`` tokens a row) and reads the compiled HLO. Without a GPU
it compiles for the device of ``--target`` (XLA's ``GpuTargetConfigProto`` in text form; the
default describes the H200 of docs/results.md) on a compile-only device of the CUDA PJRT
plugin, which needs neither a GPU nor a driver, only
``pip install jax-cuda12-plugin==<this JAX's version>``. Such a compilation has no device to
autotune on, so a GEMM gets XLA's default configuration (it may then take one kernel more or
less, split over K or not); everything else is the program the GPU runs.

The round is the body of the sampling loop (the outermost while loop with the most kernels).
A kernel is every instruction that launches one: a fusion, a custom call (the Pallas kernels,
XLA's Triton GEMMs, cuBLAS), a copy, a sort. A conditional counts its largest branch; a nested
loop's body counts once (its trip count is not known when compiling; ``nested_loops`` says how
many there are). Kinds: ``gemm`` (Triton GEMM fusions, cuBLAS calls), ``pallas`` (this
project's Pallas kernels), ``reduction`` (XLA's input fusions: reductions, concatenates),
``elementwise`` (loop fusions), ``copy`` and ``other``.

Metrics per (spec, batch): ``kernels_per_round``, ``calls_per_round`` (``decode_profile``'s
shapes of a round), ``kernels_per_call``, ``kernels_per_layer`` (the kernels whose scope is a
layer, ``block_i``, over the layers), ``by_kind`` and ``top_scopes`` (the model scopes, layers
merged, with the most kernels a round), and ``largest_write_bytes`` with its scope: the largest
buffer one of XLA's own kernels of the round writes whole (a copy, a pad, a gather; not a GEMM,
a Pallas kernel or an in-place update), and ``cache_copies``: the scopes of those that write a
whole layer of the KV cache (``B x S x N x H``, ``S`` at least the length), a copy in every
round that should not be there.
One ``compiled_kernels`` record per (spec, batch).

``--train_step=true`` compiles the config's training step instead (its batch and length, one
device) and writes one ``compiled_train_step`` record: its ``kernels``, ``by_kind``,
``top_scopes``, the largest buffer XLA's own kernels write whole and ``written_bytes``, all
they write whole (what a change to the step's memory traffic shows in).
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from asarm_jax import models, optim, state, train
from asarm_jax.models import attention
from asarm_jax.sampling import core
from asarm_jax.sampling.methods import auto
from asarm_jax.sampling.network import ModelNetwork
from benchmarks import cli, common, decode_profile, records, report

TARGET = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gpu_target.txtpb")
SHOWN = ("kernels_per_round", "calls_per_round", "kernels_per_call", "kernels_per_layer")
# Instructions that launch nothing.
_FREE = {"parameter", "constant", "get-tuple-element", "tuple", "bitcast", "after-all",
         "partition-id", "replica-id", "opt-barrier", "domain", "add-dependency",
         "get-dimension-size"}
_GEMMS = ("__triton_gemm", "__triton_nested_gemm_fusion", "__cublas")


def add_arguments(parser: argparse.ArgumentParser) -> None:
  cli.add_decode_cases(parser)
  parser.add_argument("--target", default=TARGET,
                      help="GpuTargetConfigProto (text) of the GPU compiled for when none is "
                      "attached")
  parser.add_argument("--top", type=int, default=12, help="scopes listed per record")
  parser.add_argument("--fused_decoding", type=cli.flag_bool, default=None,
                      help="override model.fused_decoding (the fused kernels of few-row calls)")
  parser.add_argument("--train_step", type=cli.flag_bool, default=False,
                      help="count the config's training step instead of the decoders")
  parser.add_argument("--hlo_dir", default="",
                      help="also write each compiled loop's HLO text here, as SPEC_bBATCH.hlo")


_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2, "f32": 4,
          "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8}


@dataclasses.dataclass(frozen=True)
class Instruction:
  """One HLO instruction: its ``op`` (``fusion``, ``custom-call``, ``while``, ...), its result
  type and the rest of its line (operands and attributes); ``root`` if it ends its
  computation."""
  name: str
  op: str
  type: str
  text: str
  root: bool = False

  def bytes(self) -> int:
    """Bytes of its result (every buffer of a tuple)."""
    return sum(_BYTES.get(dtype, 4) * int(np.prod([int(d) for d in dims.split(",") if d]))
               for dtype, dims in re.findall(r"([a-z]+\d*)\[([\d,]*)\]", self.type))


def computations(hlo: str) -> tuple[dict[str, list[Instruction]], str]:
  """The computations of an HLO module's text by name, and the entry computation's name."""
  found, current, entry = {}, None, None
  for line in hlo.splitlines():
    header = re.match(r"^(ENTRY )?%(\S+) \(", line)
    if header and line.rstrip().endswith("{"):
      current = header.group(2)
      found[current] = []
      entry = current if header.group(1) else entry
    elif line.startswith("}"):
      current = None
    elif current is not None:
      inst = re.match(r"^\s*(ROOT )?%(\S+) = (.*)$", line)
      op = inst and re.search(r"(?:^|\s)([a-z][\w\-]*)\(", inst.group(3))
      if op:
        found[current].append(Instruction(inst.group(2), op.group(1),
                                          inst.group(3)[:op.start()], inst.group(3),
                                          bool(inst.group(1))))
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")
  return found, entry


def kind(inst: Instruction) -> str:
  """The kernel kind of a launching instruction (module doc)."""
  target = re.search(r'custom_call_target="([^"]+)"|"kind":"(__[\w$.]+)"', inst.text)
  target = target and (target.group(1) or target.group(2))
  if target and target.startswith(_GEMMS):
    return "gemm"
  if inst.op == "custom-call" and target == "__gpu$xla.gpu.triton":
    return "pallas"
  if inst.op == "fusion":
    fusion = re.search(r"kind=(\w+)", inst.text).group(1)
    return {"kInput": "reduction", "kLoop": "elementwise"}.get(fusion, "other")
  return "copy" if inst.op in ("copy", "copy-start") else "other"


def scope(inst: Instruction) -> str:
  """The model scope of a kernel's ``op_name`` (layers merged as ``block_i``, the loops'
  and jit wrappers' parts dropped), or ``""``."""
  name = re.search(r'op_name="([^"]*)"', inst.text)
  if not name:
    return ""
  parts = [p for p in name.group(1).split("/")[1:]
           if p not in ("while", "body", "cond", "TwoStreamTransformer") and
           not p.startswith(("jit(", "vmap(", "closed_call"))]
  return re.sub(r"block_\d+", "block_i", "/".join(parts))


@dataclasses.dataclass
class Census:
  """The kernels of a computation: each launching instruction, the names of those that update
  a buffer in place (:func:`in_place`), and the nested loops' count."""
  kernels: list[Instruction] = dataclasses.field(default_factory=list)
  in_place: set[str] = dataclasses.field(default_factory=set)
  nested_loops: int = 0

  def add(self, other: "Census") -> None:
    self.kernels += other.kernels
    self.in_place |= other.in_place
    self.nested_loops += other.nested_loops

  def copies(self) -> list[Instruction]:
    """The kernels that write their whole result and are XLA's own (not a GEMM or a Pallas
    kernel, whose results are the work; not an in-place update): copies, pads, gathers,
    slices and elementwise fusions."""
    return [k for k in self.kernels
            if kind(k) not in ("gemm", "pallas") and k.name not in self.in_place]

  def largest_write(self) -> Instruction | None:
    """Of :meth:`copies`, the one that writes the largest buffer."""
    return max(self.copies(), key=Instruction.bytes, default=None)

  def cache_copies(self, batch: int, heads: int, head_dim: int, length: int) -> list[str]:
    """The scopes of :meth:`copies` that write a whole layer of a KV cache: a buffer
    ``batch x S x heads x head_dim`` with ``S >= length`` (in any layout)."""
    def whole_layer(inst: Instruction) -> bool:
      for dims in re.findall(r"[a-z]+\d*\[([\d,]+)\]", inst.type):
        rest = [int(d) for d in dims.split(",")]
        for size in (batch, heads, head_dim):
          if size not in rest:
            break
          rest.remove(size)
        else:
          if len(rest) == 1 and rest[0] >= length:
            return True
      return False
    return [scope(k) or k.name for k in self.copies() if whole_layer(k)]


def in_place(comps: dict[str, list[Instruction]], inst: Instruction) -> bool:
  """Whether a kernel updates a buffer in place: a fusion that ends in a dynamic-update-slice or
  a scatter writes only the update, not its whole result."""
  called = re.search(r"calls=%([\w.\-]+)", inst.text)
  if inst.op != "fusion" or not called:
    return False
  updates = [i.type.strip() for i in comps[called.group(1)]
             if i.op in ("dynamic-update-slice", "scatter")]
  return any(update and update in inst.type for update in updates)


def census(comps: dict[str, list[Instruction]], name: str) -> Census:
  """The kernels computation ``name`` launches once through (module doc: a conditional's
  largest branch, a nested loop's body once)."""
  out = Census()
  for inst in comps[name]:
    if inst.op in _FREE:
      continue
    if inst.op == "while":
      out.add(census(comps, re.search(r"body=%([\w.\-]+)", inst.text).group(1)))
      out.nested_loops += 1
    elif inst.op == "call":
      out.add(census(comps, re.search(r"to_apply=%([\w.\-]+)", inst.text).group(1)))
    elif inst.op == "conditional":
      branches = re.findall(r"(?:true|false)_computation=%([\w.\-]+)", inst.text) or re.findall(
          r"%([\w.\-]+)", re.search(r"branch_computations=\{([^}]*)\}", inst.text).group(1))
      out.add(max((census(comps, b) for b in branches), key=lambda c: len(c.kernels)))
    else:
      out.kernels.append(inst)
      if in_place(comps, inst):
        out.in_place.add(inst.name)
  return out


def round_census(hlo: str) -> Census:
  """The census of the sampling loop's body: of the entry's while loops, the one with the most
  kernels."""
  comps, entry = computations(hlo)
  bodies = [re.search(r"body=%([\w.\-]+)", i.text).group(1)
            for i in comps[entry] if i.op == "while"]
  if not bodies:
    raise ValueError("the program has no while loop")
  return max((census(comps, b) for b in bodies), key=lambda c: len(c.kernels))


def compile_only_device(target: str) -> tuple[Any, str]:
  """The attached GPU, else a compile-only CUDA device of ``target`` (module doc); and the
  device's name for the records."""
  if jax.default_backend() == "gpu":
    return jax.devices()[0], jax.devices()[0].device_kind
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  with open(target, encoding="utf-8") as f:
    text = f.read()
  try:
    topology = topologies.get_topology_desc("compiled_kernels", "cuda", target_config=text,
                                            topology="1x1x1")
  except NotImplementedError as e:
    raise SystemExit(f"compiling for a GPU without one needs the CUDA PJRT plugin: pip install "
                     f"jax-cuda12-plugin=={jax.__version__}") from e
  name = re.search(r'device_description_str: "([^"]*)"', text).group(1)
  return topology.devices[0], f"{name} (compiled without a device)"


def _placed_on(device: Any) -> Callable[[Any], jax.ShapeDtypeStruct]:
  """``x -> ShapeDtypeStruct`` of ``x``'s shape and dtype on ``device``: an argument to compile
  for."""
  sharding = jax.sharding.SingleDeviceSharding(device)
  return lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)


def compile_loop(model: Any, spec_text: str, batch: int, length: int, device: Any) -> str:
  """The compiled HLO text of ``sampling.generate``'s loop for ``batch`` rows of ``length``
  (cached, every row decoded at once) on ``device``."""
  spec = core.compiled_spec(cli.parse_spec(spec_text))
  net = ModelNetwork(model)
  on_device = _placed_on(device)
  params = jax.eval_shape(lambda: net.prepare(state.init_params(model, jax.random.key(0),
                                                                length)))
  rows = lambda dtype: on_device(jax.ShapeDtypeStruct((batch, length), dtype))
  round_ms = (on_device(jax.ShapeDtypeStruct((len(auto.sizes(spec)),), jnp.float32))
              if spec.method == "auto" else None)
  args = (jax.tree.map(on_device, params), rows(jnp.int32), rows(jnp.bool_), rows(jnp.float32),
          on_device(jax.ShapeDtypeStruct((batch,), jnp.int32)),
          on_device(jax.ShapeDtypeStruct((), jax.random.key(0).dtype)),
          on_device(jax.ShapeDtypeStruct((), jnp.float32)), round_ms)
  deterministic = models.is_batch_invariant(model)
  loop = jax.jit(core.sampling_loop(net, spec, True, batch, 1),  # a slot a row: no refill
                 compiler_options=core.compiler_options(
                     deterministic, core.command_buffers(spec, batch, deterministic)))
  return loop.trace(*args).lower(lowering_platforms=("cuda",)).compile().as_text()


def compile_train_step(config: str, device: Any) -> tuple[str, dict[str, int]]:
  """The compiled HLO text of ``config``'s training step (its batch and length, the state
  donated, as ``train.py`` runs it on one device) on ``device``, and its batch and length."""
  settings = common.config_of(config)
  model = models.build(settings.model)
  tx = optim.make_optimizer(settings.optim, settings.train.num_steps)
  batch, length = settings.train.batch_size, settings.data.seq_len
  on_device = _placed_on(device)
  abstract = jax.eval_shape(lambda r: train.create_state(model, tx, r, length),
                            jax.random.PRNGKey(0))
  step = jax.jit(train.make_train_step(model, tx, settings), donate_argnums=0)
  lowered = step.trace(jax.tree.map(on_device, abstract),
                       on_device(jax.ShapeDtypeStruct((batch, length), jnp.int32)),
                       on_device(jax.ShapeDtypeStruct((2,), jnp.uint32))).lower(
                           lowering_platforms=("cuda",))
  return lowered.compile().as_text(), {"batch": batch, "length": length}


def _kernel_metrics(found: Census, top: int) -> dict[str, Any]:
  """What a round's and a step's records share: the largest buffer XLA's own kernels write
  whole, and the kernels by kind and by scope (the ``top`` scopes)."""
  largest = found.largest_write()
  scopes = collections.Counter(scope(k) for k in found.kernels)
  return {"largest_write_bytes": largest and largest.bytes(),
          "largest_write_scope": largest and (scope(largest) or largest.name),
          "by_kind": dict(collections.Counter(kind(k) for k in found.kernels).most_common()),
          "top_scopes": [{"scope": s or "(none)", "kernels": n}
                         for s, n in scopes.most_common(top)]}


def step_metrics(found: Census, top: int) -> dict[str, Any]:
  """A training step's metrics: its kernels, ``written_bytes`` (what XLA's own kernels write
  whole in all) and :func:`_kernel_metrics`."""
  return {"kernels": len(found.kernels),
          "written_bytes": sum(k.bytes() for k in found.copies()),
          **_kernel_metrics(found, top)}


def metrics_of(found: Census, calls_per_round: int, num_layers: int, top: int,
               cache_layer: tuple[int, int, int, int]) -> dict[str, Any]:
  """The record's metrics of a round's census (module doc); ``cache_layer``: (batch, heads,
  head dim, length) of one layer of the loop's KV cache."""
  in_layers = sum("block_i" in scope(k) for k in found.kernels)
  return {"kernels_per_round": len(found.kernels), "calls_per_round": calls_per_round,
          "kernels_per_call": len(found.kernels) / calls_per_round,
          "kernels_per_layer": in_layers / num_layers / calls_per_round,
          "nested_loops": found.nested_loops,
          "cache_copies": found.cache_copies(*cache_layer),
          **_kernel_metrics(found, top)}


def run(config: str = "xlnet_base", specs: list[str] = ("sequential",),
        batches: list[int] = (1,), length: int = 0, deterministic: bool = False,
        target: str = TARGET, top: int = 12, train_step: bool = False,
        hlo_dir: str = "", fused_decoding: bool | None = None) -> Iterator[dict]:
  """One ``compiled_kernels`` record per (spec, batch); with ``train_step`` one
  ``compiled_train_step`` record instead. With ``hlo_dir``, each loop's compiled HLO text is
  written there too."""
  device, device_name = compile_only_device(target)
  made = []
  if train_step:
    with attention.gpu_target():
      text, shape = compile_train_step(config, device)
    comps, entry = computations(text)
    record = records.make("compiled_train_step", shape, step_metrics(census(comps, entry), top),
                          common.model_config(config), accelerator=device_name)
    print(f"train step: {record['metrics']['kernels']} kernels, XLA writes "
          f"{record['metrics']['written_bytes'] / 1e9:.2f} GB whole", flush=True)
    yield record
    return
  with attention.gpu_target():
    settings = common.config_of(config, fused_decoding=fused_decoding)
    model = models.build(settings.model)
    if deterministic:
      model = models.batch_invariant(model)
    length = length or settings.data.seq_len
    for text in specs:
      spec = cli.parse_spec(text)
      calls_per_round = len(decode_profile.call_shapes(spec, 1, length)[1])
      for batch in batches:
        hlo = compile_loop(model, text, batch, length, device)
        if hlo_dir:
          os.makedirs(hlo_dir, exist_ok=True)
          with open(os.path.join(hlo_dir, f"{text}_b{batch}.hlo"), "w", encoding="utf-8") as f:
            f.write(hlo)
        found = round_census(hlo)
        made.append(records.make(
            "compiled_kernels",
            {"spec": text, "batch": batch, "length": length, "deterministic": deterministic},
            metrics_of(found, calls_per_round, model.num_layers, top,
                       (batch, model.num_heads, model.d_model // model.num_heads, length)),
            common.model_config(config, attention_impl=model.attention_impl,
                                fused_decoding=model.fused_decoding),
            accelerator=device_name))
        yield made[-1]
        print(f"{text} batch {batch}: " + ", ".join(
            f"{k} {report.cell(made[-1]['metrics'][k])}" for k in SHOWN), flush=True)
  shown = [{**r, "metrics": {k: r["metrics"][k] for k in SHOWN}} for r in made]
  print("\n".join(report.table(shown)), flush=True)

