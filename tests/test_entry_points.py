"""Every entry point creates the data dir it is given, or says in one line why it cannot."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from core.settings import PROJECT_ROOT

# make's own report of a failed recipe: `make: ***` or, under another make (make test), `make[1]: ***`.
MAKES_OWN_LINE = re.compile(r"make(\[\d+\])?: ")
PYTHON_ENTRY_POINTS = {
    "loaders": ["-m", "loaders", "status"],
    "flows": ["-m", "orchestration.flows"],
    "serve": ["-m", "orchestration.serve"],
    "lake job": ["-m", "spark_jobs.vehicle_lake"],
    "query": ["-m", "loaders.query", "-c", "select 1"],
    "report": ["-m", "orchestration.report"],
}


def run(command: list[str], data_dir: Path) -> subprocess.CompletedProcess:
    # PREFECT_HOME unset: make derives it from the data dir, as on a user's machine.
    env = {name: value for name, value in os.environ.items() if name != "PREFECT_HOME"}
    return subprocess.run(
        command,
        env={**env, "ELT_DATA_DIR": str(data_dir)},
        cwd=PROJECT_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize("entry_point", ["loaders", "query"])
def test_an_entry_point_creates_a_data_dir_that_does_not_exist_yet(tmp_path, target, entry_point):
    data_dir = tmp_path / "srv" / "elt"
    result = run([sys.executable, *PYTHON_ENTRY_POINTS[entry_point]], data_dir)
    assert result.returncode == 0, result.stderr[-3000:]
    assert data_dir.is_dir()


@pytest.mark.one_target
@pytest.mark.parametrize("entry_point", PYTHON_ENTRY_POINTS)
def test_a_data_dir_that_cannot_be_created_is_one_line_and_exit_2(tmp_path, entry_point):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run([sys.executable, *PYTHON_ENTRY_POINTS[entry_point]], blocker / "elt")
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [
        f"error: cannot create the data dir {blocker / 'elt'} (ELT_DATA_DIR): Not a directory"
    ]


# Commands that return from main() within a second on a new data dir, and what each must print.
RETURNING_COMMANDS = {
    "loaders": (["loaders", "status"], 0, "Source freshness: not checked yet"),
    "query": (["loaders.query", "-c", "select 6 * 7 as answer"], 0, "42"),
    "query, failing": (["loaders.query", "-c", "select * from no_such_table"], 1, ""),
    "lake job": (["spark_jobs.vehicle_lake"], 0, ""),
    "report": (["orchestration.report"], 0, "report: "),
}


@pytest.mark.one_target  # how a Python process ends, whatever the warehouse
@pytest.mark.parametrize("command", RETURNING_COMMANDS)
def test_a_command_ends_with_its_code_and_output_and_its_objects_frozen(tmp_path, command):
    """core.cli.exit_promptly: the command's exit code and output as before, atexit handlers
    still run, and its objects are frozen (gc.freeze) so the interpreter's exit collections skip them."""
    (module, *arguments), code, printed = RETURNING_COMMANDS[command]
    runs_the_command = (
        "import atexit, gc, runpy, sys;"
        " atexit.register(lambda: print('objects frozen at exit:', gc.get_freeze_count()));"
        f" sys.argv = [{module!r}, *{arguments!r}]; runpy.run_module({module!r}, run_name='__main__', alter_sys=True)"
    )
    result = run([sys.executable, "-c", runs_the_command], tmp_path / "data")
    assert result.returncode == code, result.stderr[-3000:]
    *output, last = result.stdout.splitlines()
    assert printed in "\n".join(output)
    assert code == 0 or result.stderr.startswith("error: "), result.stderr
    frozen = int(last.removeprefix("objects frozen at exit: "))
    assert frozen > 50_000, last  # the command's imports and what it made: tens of thousands of objects


def test_every_command_line_entry_point_ends_through_exit_promptly():
    ends = {}
    for package in ("core", "lake", "loaders", "spark_jobs", "orchestration"):
        for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
            for node in ast.parse(path.read_text()).body:
                if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
                    ends[str(path.relative_to(PROJECT_ROOT))] = ast.unparse(node.body[-1])
    assert len(ends) >= len(PYTHON_ENTRY_POINTS), ends
    assert {path: end for path, end in ends.items() if not end.startswith("exit_promptly(")} == {}


@pytest.mark.one_target
def test_make_says_in_one_line_why_it_cannot_create_the_data_dir(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = run(["make", "--no-print-directory", "run"], blocker / "elt")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if not MAKES_OWN_LINE.match(line)]
    assert len(errors) == 1 and "cannot create directory" in errors[0] and str(blocker) in errors[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr


def output_in_a_terminal(command: list[str], data_dir: Path) -> str:
    """What a command writes when its stdout and stderr are a terminal (a pseudo-terminal here)."""
    import pty

    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        command, env={**os.environ, "ELT_DATA_DIR": str(data_dir)}, cwd=PROJECT_ROOT, stdout=terminal, stderr=terminal
    )
    os.close(terminal)
    chunks = []
    while True:
        try:
            chunk = os.read(controller, 65536)
        except OSError:  # the terminal closed: the command ended
            break
        if not chunk:
            break
        chunks.append(chunk)
    process.wait(timeout=300)
    os.close(controller)
    return b"".join(chunks).decode(errors="replace")


@pytest.mark.one_target
def test_loads_show_dlt_progress_in_a_terminal_and_none_in_a_pipe(tmp_path):
    command = [sys.executable, "-m", "loaders", "football-csv", "--divisions", "E0"]
    in_terminal = output_in_a_terminal(command, tmp_path / "terminal")
    assert "football_csv: 1/1 files, 2425/E0 loaded" in in_terminal
    assert "Extract football_csv" in in_terminal and "matches: 261" in in_terminal, in_terminal  # dlt's collector
    piped = run(command, tmp_path / "pipe")
    assert piped.returncode == 0 and "football_csv: 1/1 files, 2425/E0 loaded" in piped.stderr
    assert "Extract football_csv" not in piped.stdout + piped.stderr and "Rate:" not in piped.stdout + piped.stderr
