"""How a command (``asarm_jax.main``, ``asarm_jax.convert``) ends when it cannot finish: one line.

A bad input or a fault the user can act on ends it with ``error: ...`` and status 1; SIGINT
(Ctrl-C) or SIGTERM at any moment outside the training loop (which saves and stops on them
itself, :class:`asarm_jax.run_io.StopRequest`) with ``interrupted by SIGINT ...`` and status 130.
``verbose`` re-raises instead: the traceback.
"""
from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

from asarm_jax import checkpoint, workdir_lock

# Errors that end a command with one line: bad inputs and faults the user can act on.
USER_ERRORS = (ValueError, OSError, FloatingPointError, checkpoint.CheckpointError,
               workdir_lock.WorkdirBusy)


class Interrupted(KeyboardInterrupt):
  """SIGINT or SIGTERM arrived; ``args[0]`` is the signal's name."""


def one_line(error: BaseException) -> str:
  """The first line of ``error``'s message (its type where that says more than the text)."""
  text = str(error).strip().split("\n")[0]
  if isinstance(error, OSError) and not isinstance(error, FileNotFoundError):
    return f"{type(error).__name__}: {text}"
  return text or type(error).__name__


def _interrupt(signum: int, frame) -> None:  # pylint: disable=unused-argument
  raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def ends_in_one_line(verbose: bool) -> Iterator[None]:
  """Runs the block with SIGINT and SIGTERM raising :class:`Interrupted`; a user error or an
  interrupt in it exits with one line (``verbose``: re-raised)."""
  previous = {s: signal.signal(s, _interrupt) for s in (signal.SIGINT, signal.SIGTERM)}
  try:
    yield
  except KeyboardInterrupt as e:
    if verbose:
      raise
    name = e.args[0] if isinstance(e, Interrupted) else "SIGINT"
    print(f"interrupted by {name}; what was saved is kept: rerun the same command to go on.",
          file=sys.stderr, flush=True)
    sys.exit(128 + signal.Signals[name].value)
  except USER_ERRORS as e:
    if verbose:
      raise
    sys.exit(f"error: {one_line(e)}")
  finally:
    for s, handler in previous.items():
      signal.signal(s, handler)
