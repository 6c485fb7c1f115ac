"""The kernel census of a compiled program (benchmarks/compiled_kernels.py): the HLO reader on
a hand-written module, and every decoder's loop and the training step compiled for a GPU
without one where the CUDA compiler plugin is at hand."""
import json
import re
import os
import subprocess
import sys

import pytest

from benchmarks import common, compiled_kernels

# A scheduled module as XLA prints it, cut to what the reader looks at: a small loop and the
# "sampling loop", whose body launches a pad, an in-place update, a Pallas kernel, a GEMM, a
# copy, a conditional (1 or 2 kernels) and a nested loop (1 kernel); the rest launch nothing.
HLO = """HloModule jit_loop, is_scheduled=true

%fused_update (p0: bf16[64,8], p1: bf16[1,8], p2: s32[]) -> bf16[64,8] {
  %p0 = bf16[64,8]{1,0} parameter(0)
  %p1 = bf16[1,8]{1,0} parameter(1)
  %p2 = s32[] parameter(2)
  %c0 = s32[] constant(0)
  ROOT %dynamic-update-slice.1 = bf16[64,8]{1,0} dynamic-update-slice(%p0, %p1, %p2, %c0)
}

%fused_pad (p0: bf16[1,2,1,8]) -> bf16[1,16,1,8] {
  %p0 = bf16[1,2,1,8]{3,2,1,0} parameter(0)
  %c = bf16[] constant(0)
  ROOT %pad.1 = bf16[1,16,1,8]{3,2,1,0} pad(%p0, %c), padding=0_0x0_14x0_0x0_0
}

%one (a: bf16[2,8]) -> bf16[2,8] {
  %a = bf16[2,8]{1,0} parameter(0)
  ROOT %copy.1 = bf16[2,8]{1,0} copy(%a)
}

%two (a: bf16[2,8]) -> bf16[2,8] {
  %a = bf16[2,8]{1,0} parameter(0)
  %copy.2 = bf16[2,8]{1,0} copy(%a)
  ROOT %copy.3 = bf16[2,8]{1,0} copy(%copy.2)
}

%inner (t: (s32[], bf16[2,8])) -> (s32[], bf16[2,8]) {
  %t = (s32[], bf16[2,8]{1,0}) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = bf16[2,8]{1,0} get-tuple-element(%t), index=1
  %wrapped_add = s32[] fusion(%i), kind=kLoop, calls=%one
  ROOT %r = (s32[], bf16[2,8]{1,0}) tuple(%wrapped_add, %x)
}

%round (t: (s32[], bf16[2,8], bf16[64,8], pred[])) -> (s32[], bf16[2,8], bf16[64,8], pred[]) {
  %t = (s32[], bf16[2,8]{1,0}, bf16[64,8]{1,0}, pred[]) parameter(0)
  %i = s32[] get-tuple-element(%t), index=0
  %x = bf16[2,8]{1,0} get-tuple-element(%t), index=1
  %cache = bf16[64,8]{1,0} get-tuple-element(%t), index=2
  %p = pred[] get-tuple-element(%t), index=3
  %loop_pad_fusion = bf16[1,16,1,8]{3,2,1,0} fusion(%x), kind=kLoop, calls=%fused_pad, metadata={op_name="jit(sample)/while/body/TwoStreamTransformer/block_3/attention/attend/jit(_pad)/pad" stack_frame_id=1}
  %pallas_call.0 = bf16[1,16,1,8]{3,2,1,0} custom-call(%loop_pad_fusion), custom_call_target="__gpu$xla.gpu.triton", metadata={op_name="jit(sample)/while/body/TwoStreamTransformer/block_3/attention/attend/pallas_call"}
  %gemm_fusion_dot.1 = bf16[2,8]{1,0} fusion(%x), kind=kCustom, calls=%one, backend_config={"fusion_backend_config":{"kind":"__triton_nested_gemm_fusion"}}
  %update = bf16[64,8]{1,0} fusion(%cache, %gemm_fusion_dot.1, %i), kind=kLoop, calls=%fused_update
  %copy.7 = bf16[2,8]{1,0} copy(%x)
  %cond = bf16[2,8]{1,0} conditional(%p, %x, %x), true_computation=%one, false_computation=%two
  %loop = (s32[], bf16[2,8]{1,0}) while((s32[], bf16[2,8]{1,0}) %t), condition=%one, body=%inner
  ROOT %r = (s32[], bf16[2,8]{1,0}, bf16[64,8]{1,0}, pred[]) tuple(%i, %cond, %update, %p)
}

%small (t: (s32[])) -> (s32[]) {
  %t = (s32[]) parameter(0)
  %copy.8 = (s32[]) copy(%t)
  ROOT %r = (s32[]) tuple(%t)
}

ENTRY %main (a: (s32[], bf16[2,8], bf16[64,8], pred[])) -> (s32[], bf16[2,8], bf16[64,8], pred[]) {
  %a = (s32[], bf16[2,8]{1,0}, bf16[64,8]{1,0}, pred[]) parameter(0)
  %warm = (s32[]) while((s32[]) %a), condition=%small, body=%small
  ROOT %w = (s32[], bf16[2,8]{1,0}, bf16[64,8]{1,0}, pred[]) while(%a), condition=%one, body=%round
}
"""


def test_the_census_counts_what_a_round_launches():
  found = compiled_kernels.round_census(HLO)
  names = [k.name for k in found.kernels]
  # The pad, the Pallas kernel, the GEMM, the update, the copy, the conditional's larger branch
  # (2) and the nested loop's body (1); not the parameters, tuples and the smaller loop's copy.
  assert names == ["loop_pad_fusion", "pallas_call.0", "gemm_fusion_dot.1", "update", "copy.7",
                   "copy.2", "copy.3", "wrapped_add"]
  assert found.nested_loops == 1 and found.in_place == {"update"}
  assert [compiled_kernels.kind(k) for k in found.kernels] == [
      "elementwise", "pallas", "gemm", "elementwise", "copy", "copy", "copy", "elementwise"]
  assert compiled_kernels.scope(found.kernels[0]) == "block_i/attention/attend/pad"
  # The in-place update writes the largest buffer (64 x 8) but only its row; the Pallas
  # kernel's result is the work: the largest buffer written whole is the pad's, 16 x 8 bf16,
  # which has the shape of a cache layer of 1 row, 1 head of 8 and 16 slots (not of 17).
  largest = found.largest_write()
  assert (largest.name, largest.bytes()) == ("loop_pad_fusion", 256)
  assert found.cache_copies(1, 1, 8, 16) == ["block_i/attention/attend/pad"]
  assert found.cache_copies(1, 1, 8, 17) == [] and found.cache_copies(2, 1, 8, 16) == []


def test_the_metrics_of_a_census():
  found = compiled_kernels.round_census(HLO)
  metrics = compiled_kernels.metrics_of(found, calls_per_round=2, num_layers=4, top=2,
                                        cache_layer=(1, 1, 8, 16))
  assert metrics["kernels_per_round"] == 8 and metrics["kernels_per_call"] == 4
  assert metrics["kernels_per_layer"] == 2 / 4 / 2  # the pad and the Pallas kernel: block_3
  assert metrics["by_kind"] == {"elementwise": 3, "copy": 3, "pallas": 1, "gemm": 1}
  assert metrics["top_scopes"][0] == {"scope": "(none)", "kernels": 6}
  assert metrics["largest_write_bytes"] == 256
  assert metrics["cache_copies"] == ["block_i/attention/attend/pad"]


def test_a_module_without_an_entry_or_a_loop_is_refused():
  with pytest.raises(ValueError, match="no ENTRY"):
    compiled_kernels.computations("HloModule empty\n")
  with pytest.raises(ValueError, match="no while loop"):
    compiled_kernels.round_census(
        "HloModule m\n\nENTRY %main (a: f32[2]) -> f32[2] {\n"
        "  ROOT %a = f32[2]{0} parameter(0)\n}\n")


# Where .ci/run installs the CUDA PJRT plugin (jax-cuda12-plugin at this JAX's version, kept
# off the tests' own path): the decoders' loops then compile for the GPU of
# benchmarks/gpu_target.txtpb, Triton and PTX included, on a machine without one.
GPU_COMPILER = os.environ.get("ASARM_JAX_GPU_COMPILER", "")
needs_gpu_compiler = pytest.mark.skipif(
    not os.path.isdir(GPU_COMPILER),
    reason="set ASARM_JAX_GPU_COMPILER to a folder holding jax-cuda12-plugin (pip install "
    "--target DIR jax-cuda12-plugin==<jax version> jax-cuda12-pjrt==<jax version>)")
BATCH = 8


def compiled_for_the_gpu(folder, *flags: str) -> list[dict]:
  """The records of ``python -m benchmarks compiled_kernels --config=demo FLAGS``, run in a
  process that has the plugin."""
  root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
  subprocess.run([sys.executable, "-m", "benchmarks", "compiled_kernels", "--config=demo",
                  *flags, f"--records_dir={folder}"],
                 env=dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=GPU_COMPILER), check=True,
                 cwd=root)
  return [json.loads(line) for path in folder.rglob("*.jsonl") for line in open(path)]


def census_of_demo(spec: str, folder) -> list[dict]:
  """``compiled_kernels`` records of the demo model's loop of ``spec`` at batch 1 and
  :data:`BATCH`."""
  made = compiled_for_the_gpu(folder, f"--specs={spec}", f"--batches=1,{BATCH}")
  assert sorted((r["settings"]["spec"], r["settings"]["batch"]) for r in made) == [
      (spec, 1), (spec, BATCH)]
  return made


@needs_gpu_compiler
@pytest.mark.parametrize("spec", ["sequential", "assd:3", "assd_fused:3", "tree:4:3", "auto:3"])
def test_every_decoder_compiles_for_the_gpu_without_a_per_call_copy_of_the_cache(spec, tmp_path):
  """Each decoder's loop of the demo model compiles for the H200 (no device needed), with one
  attention kernel a layer a call, no loop inside the round (whose iterations the host would
  run: ``auto``'s ``jnp.searchsorted`` and the tree's ancestors were such loops until
  2026-12-05), and no kernel of a round writes a whole layer of the KV cache except in place
  (a copy or pad of it in every call, as the 2026-12-04 profile found: 0.84 ms of a 2.98 ms
  call at batch 64; ``auto``'s switches copied every layer in and out before
  ``sampling.core.COMPILER_OPTIONS``)."""
  layers = common.config_of("demo").model.num_layers
  for record in census_of_demo(spec, tmp_path):
    metrics = record["metrics"]
    assert metrics["by_kind"]["pallas"] == layers * metrics["calls_per_round"], record
    assert metrics["nested_loops"] == 0, record
    assert metrics["cache_copies"] == [], record


@needs_gpu_compiler
def test_the_fused_block_compiles_for_the_gpu(tmp_path):
  """With ``model.fused_decoding`` a sequential call at batch 1 runs each layer as the
  attention kernel and three ``fused_dense`` kernels, compiled for the H200 (Triton's PTX
  included)."""
  layers = common.config_of("demo").model.num_layers
  [made] = compiled_for_the_gpu(tmp_path, "--specs=sequential", "--batches=1",
                                "--fused_decoding=true")
  assert made["metrics"]["by_kind"]["pallas"] == 4 * layers, made


@needs_gpu_compiler
def test_the_training_step_compiles_for_the_gpu(tmp_path):
  """The demo config's training step compiles for the H200, its attention the fused kernel
  forward and backward: three Pallas kernels a layer (forward, dq, dk and dv), none left to
  XLA's reference attention."""
  [record] = compiled_for_the_gpu(tmp_path, "--train_step=true")
  assert record["name"] == "compiled_train_step"
  layers = common.config_of("demo").model.num_layers
  assert record["metrics"]["by_kind"]["pallas"] == 3 * layers, record


def rounded_where_read(hlo: str, scope: str) -> list[bool]:
  """For each kernel of the sampling loop's round that reads the float32 output of the Pallas
  call of ``scope``: whether it rounds it to bf16 before any other use."""
  comps, _ = compiled_kernels.computations(hlo)
  kernels = compiled_kernels.round_census(hlo).kernels
  [call] = [k for k in kernels
            if k.op == "custom-call" and compiled_kernels.scope(k).endswith(scope)]
  operands = lambda inst: re.findall(
      r"%([\w.\-]+)", re.search(rf"{inst.op}\(([^)]*)\)", inst.text).group(1))
  found = []
  for reader in kernels:
    if call.name not in operands(reader):
      continue
    called = re.search(r"calls=%([\w.\-]+)", reader.text)
    body = comps[called.group(1)] if reader.op == "fusion" and called else []
    params = [i.name for i in body if i.op == "parameter" and
              f"parameter({operands(reader).index(call.name)})" in i.text]
    uses = [i for i in body if params and params[0] in operands(i)]
    found.append(bool(uses) and all(i.op == "convert" and i.type.startswith("bf16")
                                    for i in uses))
  return found


@needs_gpu_compiler
def test_deterministic_decoding_rounds_the_logits_to_bf16_at_every_batch(tmp_path):
  """Deterministic decoding's program (a bf16 model's) keeps the model's rounding of the logits
  to bf16 at batch 1 and at batch 64. With XLA's default excess precision, batch 64's one-row
  calls (64 rows: no slice of the padded head rows between the two converts) kept them in
  float32 while batch 1 rounded them, and the same row got other tokens on the H100 (2026-12-05);
  ``sampling.core.DETERMINISTIC_OPTIONS`` turns excess precision off."""
  compiled_for_the_gpu(tmp_path, "--config=text_small", "--length=128", "--specs=sequential",
                       "--batches=1,64", "--deterministic=true", f"--hlo_dir={tmp_path / 'hlo'}")
  for batch in (1, 64):
    hlo = (tmp_path / "hlo" / f"sequential_b{batch}.hlo").read_text()
    readers = rounded_where_read(hlo, "_head_logits/pallas_call")
    assert readers and all(readers), (batch, readers)
