"""One writer per workdir (asarm_jax.workdir_lock): the holder is another real process."""
import os
import signal
import socket
import subprocess
import sys

import pytest

from asarm_jax import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLD = """
import sys
from asarm_jax import workdir_lock
with workdir_lock.hold(sys.argv[1], "training"):
  print("held", flush=True)
  sys.stdin.readline()
"""


def holder_process(workdir: str) -> subprocess.Popen:
  """A process that holds ``workdir``'s lock until its stdin gets a line (or it is killed)."""
  proc = subprocess.Popen([sys.executable, "-c", HOLD, workdir], cwd=ROOT, text=True,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
  assert proc.stdout.readline() == "held\n"
  return proc


def test_a_second_writer_is_refused_at_once_naming_the_holder(tmp_path):
  workdir = str(tmp_path / "w")
  proc = holder_process(workdir)
  with pytest.raises(workdir_lock.WorkdirBusy) as err:
    with workdir_lock.hold(workdir, "conversion"):
      pytest.fail("entered a workdir that another process holds")
  message = str(err.value)
  assert "\n" not in message
  assert message.startswith(f"{workdir} is in use: training (pid {proc.pid} on "
                            f"{socket.gethostname()}, since 20")
  assert message.endswith(f"holds {workdir}/.lock; wait for it to end, or use another "
                          "--workdir.")
  assert os.listdir(workdir) == [".lock"]  # the refused writer wrote nothing
  proc.communicate("\n", timeout=60)  # the holder ends: its lock file goes with it, and the
  assert proc.returncode == 0 and not os.path.exists(workdir)  # workdir it created, empty
  with workdir_lock.hold(workdir, "training"):
    assert workdir_lock.holder(workdir)["pid"] == os.getpid()


def test_the_lock_of_a_killed_holder_is_stale_and_taken_over(tmp_path):
  workdir = str(tmp_path / "w")
  proc = holder_process(workdir)
  proc.send_signal(signal.SIGKILL)
  proc.wait(timeout=60)
  assert workdir_lock.holder(workdir)["pid"] == proc.pid  # the file stays behind
  with workdir_lock.hold(workdir, "training"):
    assert workdir_lock.holder(workdir) == {**workdir_lock.holder(workdir), "pid": os.getpid(),
                                            "host": socket.gethostname(), "what": "training"}
  assert os.listdir(workdir) == []


def test_a_workdir_created_for_nothing_is_removed_and_a_written_one_kept(tmp_path):
  with pytest.raises(ValueError):
    with workdir_lock.hold(str(tmp_path / "empty"), "training"):
      raise ValueError("failed before writing")
  assert not os.path.exists(tmp_path / "empty")
  with workdir_lock.hold(str(tmp_path / "written"), "training"):
    open(tmp_path / "written" / "metrics.jsonl", "w").close()
  assert os.listdir(tmp_path / "written") == ["metrics.jsonl"]
  os.makedirs(tmp_path / "existing")
  with workdir_lock.hold(str(tmp_path / "existing"), "training"):
    pass
  assert os.path.isdir(tmp_path / "existing")  # not created by the lock: kept, even empty
