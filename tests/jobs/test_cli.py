"""jobs/cli.py: the `vlmcap` console command dispatches to each job's own `main` and is installed."""

from __future__ import annotations

import shutil
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from jobs import cli


def test_version_help_and_unknown_command(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("vlmcap ")
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in cli.COMMANDS)
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err
    assert cli.main([]) == 2


def test_subcommand_runs_the_jobs_own_parser(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["caption", "--help"])
    assert exc.value.code == 0
    assert "--max-new-tokens" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        cli.main(["caption", "--no-such-flag"])
    assert exc.value.code == 2


def test_console_script_is_installed():
    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("vlmcap") == "jobs.cli:run"
    exe = shutil.which("vlmcap") or str(Path(sys.executable).with_name("vlmcap"))
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.startswith("vlmcap 0.")
