"""The ``floatguard`` command line: version, usage errors, dispatch."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

import floatguard
from floatguard import cli


def test_version(capsys):
    assert cli.main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"floatguard {floatguard.__version__}"
    assert floatguard.__version__ == importlib.metadata.version("floatguard")


def test_unknown_subcommand_is_a_usage_error(capsys):
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'frobnicate'" in err and "usage: floatguard" in err


def test_no_subcommand_prints_help_and_exits_2(capsys):
    assert cli.main([]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "usage: floatguard" in captured.err and "commands:" in captured.err
    for cmd in cli.COMMANDS:
        assert cmd.name in captured.err


def test_unknown_option_of_a_subcommand_is_a_usage_error(capsys):
    assert cli.main(["demo", "--no-such-option"]) == 2
    assert "unrecognized arguments: --no-such-option" in capsys.readouterr().err


def test_help_exits_0(capsys):
    assert cli.main(["--help"]) == 0
    assert "demo" in capsys.readouterr().out


def test_every_command_has_a_subparser_and_handler():
    parser = cli.build_parser()
    required = {"report": ["run.jsonl"]}  # positional arguments a command cannot do without
    for cmd in cli.COMMANDS:
        args = parser.parse_args([cmd.name, *required.get(cmd.name, [])])
        assert args.command == cmd.name and args.handler is cmd.handler


def test_a_new_command_is_one_entry(monkeypatch, capsys):
    calls = []

    def add_arguments(p):
        p.add_argument("--n", type=int, default=1)

    def handler(args):
        calls.append(args.n)
        return 3

    probe = cli.Command("probe", "a test command", add_arguments, handler)
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, probe])
    assert cli.main(["probe", "--n", "7"]) == 3 and calls == [7]
    assert cli.main(["probe", "--n", "x"]) == 2
    assert "invalid int value" in capsys.readouterr().err


def test_console_script_entry_point():
    (ep,) = importlib.metadata.entry_points(group="console_scripts", name="floatguard")
    assert ep.load() is cli.main


@pytest.mark.parametrize("argv, code", [(["--version"], 0), (["nope"], 2), ([], 2)])
def test_python_dash_m_exit_codes(argv, code):
    proc = subprocess.run([sys.executable, "-m", "floatguard", *argv], capture_output=True, text=True, timeout=60)
    assert proc.returncode == code, proc.stderr
