"""Settings of every test process (and, through the environment, of its subprocesses).

XLA's CPU backend compiles without LLVM's optimisation passes: the tests are dominated by
compiling small programs, which this halves, while the programs themselves are unchanged.
"""
import os

FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
