"""Children end with their parent (issue 20, finding 13): a ``kill -9`` of the parent leaves no
child writing on its own. A parent process starts a sleeping child (a plain command, the child
``train_net.py`` of ``loss_table.py``, the ranks of ``--num-gpus 2``), is killed with SIGKILL,
and the children must be gone within a few seconds. And the error lines of several processes
never run together: one write per line, each rank's line prefixed with its rank."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from common import REPO, VOC20_TOY_CONFIG

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's"
)

#: a child that says its pid (atomically) and sleeps far longer than the test waits
_SLEEPER = (
    "import os, sys, time; p = sys.argv[1]; open(p + '.tmp', 'w').write(str(os.getpid())); "
    "os.replace(p + '.tmp', p); time.sleep(300)"
)


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def _wait_for_files(folder, count, parent, timeout=240.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        names = [n for n in os.listdir(folder) if n.startswith("pid") and "." not in n]
        if len(names) >= count:
            return [int(open(os.path.join(folder, n)).read()) for n in names]
        assert parent.poll() is None, open(os.path.join(folder, "parent.log")).read()[-3000:]
        time.sleep(0.2)
    raise AssertionError(f"the children did not start in {timeout} s")


def _kill_parent_and_check_children(parent, children, within=10.0):
    assert all(_alive(pid) for pid in children)
    parent.kill()  # SIGKILL: the parent runs no code of its own
    parent.wait()
    deadline = time.monotonic() + within
    try:
        while time.monotonic() < deadline and any(_alive(pid) for pid in children):
            time.sleep(0.1)
        survivors = [pid for pid in children if _alive(pid)]
        assert not survivors, f"children {survivors} outlived a kill -9 of their parent"
    finally:
        for pid in children:  # never leave one behind, even when the test fails
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _start(folder, script, *args):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        cwd=REPO,
        env=env,
        stdout=open(os.path.join(folder, "parent.log"), "w"),  # not a pipe: children keep it
        stderr=subprocess.STDOUT,
    )


def test_a_popen_child_dies_with_its_parent(tmp_path):
    parent = _start(
        tmp_path,
        """
        import subprocess, sys, time
        from clipdistill.utils.process import die_with_parent
        subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2]],
                         preexec_fn=die_with_parent())
        time.sleep(300)
        """,
        _SLEEPER,
        str(tmp_path / "pid0"),
    )
    children = _wait_for_files(tmp_path, 1, parent)
    _kill_parent_and_check_children(parent, children)


def test_train_net_run_ends_with_its_caller(tmp_path):
    """``engine.runs.run_train_net``'s child (``train_net.py`` of ``loss_table.py`` and
    ``compare.py``, here a sleeper in its place) ends with its caller."""
    parent = _start(
        tmp_path,
        """
        import sys
        from clipdistill.engine import runs
        sleeper, pid_file, config, out = sys.argv[1:5]
        runs.tool_command = lambda script: [sys.executable, "-c", sleeper, pid_file]
        runs.run_train_net(config, out, [], 0)
        """,
        _SLEEPER,
        str(tmp_path / "pid0"),
        VOC20_TOY_CONFIG,
        str(tmp_path / "run"),
    )
    children = _wait_for_files(tmp_path, 1, parent)
    _kill_parent_and_check_children(parent, children)


def test_ranks_of_num_gpus_2_end_with_the_launcher(tmp_path):
    """The two processes that ``launch_tool`` starts for ``--num-gpus 2`` (gloo on the CPU).
    torch's spawn asks for SIGINT at the parent's death, which a training loop's ``finally``
    survives (detectron2's ``after_train`` hooks wrote ``model_final.pth`` 35 s after the
    launcher's death): the rank's ``finally`` here sleeps on, and only SIGKILL ends it."""
    script = tmp_path / "launcher.py"
    script.write_text(
        textwrap.dedent(
            """
            import argparse, os, sys, time
            from clipdistill.utils.cli import launch_tool

            def main(args):
                p = os.path.join(args.folder, f"pid{os.getpid()}")
                open(p + ".tmp", "w").write(str(os.getpid()))
                os.replace(p + ".tmp", p)
                try:
                    time.sleep(300)
                finally:  # detectron2's after_train hooks: a final checkpoint, an evaluation
                    time.sleep(300)

            if __name__ == "__main__":
                args = argparse.Namespace(num_gpus=2, num_machines=1, machine_rank=0,
                                          dist_url="auto", folder=sys.argv[1])
                sys.exit(launch_tool("launcher.py", main, args))
            """
        )
    )
    env = dict(
        os.environ,
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
    )
    parent = subprocess.Popen(
        [sys.executable, str(script), str(tmp_path)],
        cwd=REPO,
        env=env,
        stdout=open(tmp_path / "parent.log", "w"),  # not a pipe: children keep it
        stderr=subprocess.STDOUT,
    )
    children = _wait_for_files(tmp_path, 2, parent)
    assert parent.pid not in children
    _kill_parent_and_check_children(parent, children)


def test_error_line_is_one_write_ending_in_a_newline(monkeypatch):
    """``report_error`` writes its line and the newline at once: two processes' lines on one
    terminal cannot run together (print() wrote the text and the newline separately)."""
    import io

    from clipdistill.utils.cli import report_error

    class Recorder(io.StringIO):
        writes = []

        def write(self, text):
            self.writes.append(text)
            return len(text)

        def fileno(self):
            raise io.UnsupportedOperation("captured")

    rec = Recorder()
    monkeypatch.setattr(sys, "stderr", rec)
    assert report_error("tool.py", "bad value") == 2
    assert rec.writes == ["tool.py: error: bad value\n"]
    rec.writes.clear()
    r, w = os.pipe()  # a real file descriptor: one os.write, a lone surrogate escaped
    with os.fdopen(w, "w", encoding="utf-8") as stream:
        monkeypatch.setattr(sys, "stderr", stream)
        report_error("tool.py", "name d\udcf6g")
    with os.fdopen(r, "rb") as f:
        assert f.read() == b"tool.py: error: name d\\udcf6g\n"


def test_each_rank_error_is_its_own_line_prefixed_with_the_rank(tmp_path):
    """Two ranks with different user errors: two lines, each naming its rank; the same error in
    both ranks: one line naming both."""
    script = tmp_path / "launcher.py"
    script.write_text(
        textwrap.dedent(
            """
            import argparse, sys
            from detectron2.utils import comm
            from clipdistill.utils.cli import launch_tool
            from clipdistill.utils.errors import ConfigError

            def main(args):
                rank = comm.get_rank() if args.differ else 0
                raise ConfigError(f"bad value in process {rank}")

            if __name__ == "__main__":
                args = argparse.Namespace(num_gpus=2, num_machines=1, machine_rank=0,
                                          dist_url="auto", differ=sys.argv[1] == "differ")
                sys.exit(launch_tool("launcher.py", main, args))
            """
        )
    )
    env = dict(
        os.environ,
        PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
        CUDA_VISIBLE_DEVICES="",
        OMP_NUM_THREADS="1",
    )
    for mode, expected in [
        ("differ", ["rank 0: bad value in process 0", "rank 1: bad value in process 1"]),
        ("same", ["ranks 0, 1: bad value in process 0"]),
    ]:
        p = subprocess.run(
            [sys.executable, str(script), mode],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert p.returncode == 2, p.stderr[-3000:]
        errors = [line for line in p.stderr.splitlines() if ": error: " in line]
        assert errors == [f"launcher.py: error: {e}" for e in expected], p.stderr[-3000:]
