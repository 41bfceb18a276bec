"""The one function every executor writes a job's script with, and the command that runs it."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from jupyter_aigrid.server.executors.scripts import (
    SCRIPT_MODE,
    runner_argv,
    script_path,
    write_script,
)


def mode(path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_the_script_is_main_attempt_py_read_only_in_a_folder_made_for_it(tmp_path):
    folder = tmp_path / "jobs" / "t-1"
    path = write_script(folder, 3, "print('hi')\n")
    assert path == folder / "main-3.py" == script_path(folder, 3)
    assert path.read_text() == "print('hi')\n"
    assert mode(path) == SCRIPT_MODE == 0o444
    assert [p.name for p in folder.iterdir()] == ["main-3.py"]  # no temp file left behind


def test_each_attempt_has_its_own_script_and_a_changed_one_is_replaced(tmp_path):
    first = write_script(tmp_path, 0, "print(0)\n")
    second = write_script(tmp_path, 1, "print(1)\n")
    assert first.read_text() == "print(0)\n" and second.read_text() == "print(1)\n"
    with first.open() as reader:  # a replica that already read it keeps what it read
        again = write_script(tmp_path, 0, "print('zero')\n")
        assert reader.read() == "print(0)\n"
    assert again == first and first.read_text() == "print('zero')\n"
    assert mode(first) == SCRIPT_MODE


def test_the_ranks_of_an_attempt_share_one_write(tmp_path):
    path = write_script(tmp_path, 0, "print(1)\n")
    inode = os.stat(path).st_ino
    assert write_script(tmp_path, 0, "print(1)\n") == path
    assert os.stat(path).st_ino == inode  # kept as it was: no second durable write
    os.chmod(path, 0o644)  # made writable (by the job?): not trusted, written again
    write_script(tmp_path, 0, "print(1)\n")
    assert os.stat(path).st_ino != inode and mode(path) == SCRIPT_MODE


def test_a_link_planted_at_the_script_s_name_is_replaced_never_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    folder = tmp_path / "job"
    folder.mkdir()
    os.symlink(victim, folder / "main-0.py")
    path = write_script(folder, 0, "print(1)\n")
    assert not path.is_symlink() and path.read_text() == "print(1)\n"
    assert victim.read_text() == "keep me\n" and mode(victim) != SCRIPT_MODE


@pytest.mark.parametrize("attempt", [-1, 1.5, "0", True, None])
def test_the_attempt_must_be_an_integer_not_below_zero(tmp_path, attempt):
    with pytest.raises(ValueError, match="attempt must be an integer >= 0"):
        write_script(tmp_path, attempt, "print(1)\n")
    assert list(tmp_path.iterdir()) == []


def test_the_code_must_be_text(tmp_path):
    with pytest.raises(TypeError, match="code must be Python source text"):
        write_script(tmp_path, 0, b"print(1)\n")


def test_the_runner_runs_the_script_with_its_arguments(tmp_path):
    path = write_script(tmp_path, 0, "import sys\nprint(sys.argv[1:])\n")
    argv = runner_argv(sys.executable, path, ["a", "b c"])
    assert argv == [sys.executable, "-u", "-m", "jupyter_aigrid.runner", str(path), "a", "b c"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("['a', 'b c']")
