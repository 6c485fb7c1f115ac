"""Benchmarks of asarm_jax, one module each, run as ``python -m benchmarks NAME [--flags]``.

Every benchmark module has ``add_arguments(parser)`` (argparse flags) and ``run(**flags) ->
list[record]`` (:mod:`benchmarks.records`). ``python -m benchmarks experiment NAME`` runs the
staged experiments of :mod:`benchmarks.experiments`; ``python -m benchmarks report`` rewrites
the docs' tables from the committed records. ``docs/benchmarks.md`` says what each measures.
"""

BENCHMARKS = ("call_cost", "compiled_kernels", "cost_model", "decode_profile", "decoders",
              "floor_model", "fused_dense", "greedy_agreement", "hf_xlnet", "humaneval",
              "invariance_probe", "kernel_scopes", "mdlm_comparison",
              "profile_step", "sampling_speed", "speed_ratios", "task_overhead", "tokens_per_call",
              "trace_summary", "train_throughput", "while_loop_graphs")
TOOLS = ("experiment", "report")
