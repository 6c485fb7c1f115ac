"""Settings of every test process (and, through the environment, of its subprocesses).

XLA's CPU backend compiles without LLVM's optimisation passes: the tests are dominated by
compiling small programs, which this halves, while the programs themselves are unchanged.

``auto``'s cost models are read from a folder that does not exist (a test that needs one
writes it under its own ``tmp_path``), so a cost file on the developer's machine never changes
a test.
"""
import gc
import os
import tempfile

import pytest

from asarm_jax.sampling import core

FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {FAST_COMPILE}".strip()
os.environ["ASARM_JAX_CACHE_DIR"] = os.path.join(tempfile.gettempdir(),
                                                 f"asarm-tests-no-cache-{os.getpid()}")


@pytest.fixture(scope="module", autouse=True)
def _free_compiled_programs():
  """After each test module: the compiled programs forgotten and freed. A worker runs many
  modules, each compiled program holds ~3 memory maps per kernel, and a process past
  ``vm.max_map_count`` (65530 by default) crashes in XLA (a decoding loop is hundreds of
  kernels)."""
  yield
  core.clear_compiled()
  gc.collect()
