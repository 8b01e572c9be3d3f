"""The `great-escape` command line: every subcommand registered, and one subcommand imports only its module."""

import subprocess
import sys

import pytest

from great_escape import cli


def _commands(parser) -> set[str]:
    (sub,) = [a for a in parser._actions if a.dest == "command"]  # noqa: SLF001 - argparse keeps them there
    return set(sub.choices)


def test_the_table_names_every_subcommand_the_modules_register():
    assert _commands(cli.build_parser()) == set(cli.SUBCOMMANDS)


@pytest.mark.parametrize("command", sorted(cli.SUBCOMMANDS))
def test_one_subcommand_builds_from_its_own_module(command):
    assert command in _commands(cli.build_parser(command))


def test_a_progress_record_does_not_import_the_database_driver(tmp_path):
    # The roles run `progress record` at every sample and twice in the dump's shell: it must start fast.
    code = ("import sys; from great_escape import cli; "
            f"rc = cli.main(['-v', 'progress', 'record', '--state-dir', {str(tmp_path)!r}, '--phase', 'dump', "
            "'--done', '1']); print(rc, 'psycopg' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split()[-2:] == ["0", "False"]


def test_an_unknown_subcommand_is_refused_with_the_list(capsys):
    with pytest.raises(SystemExit):
        cli.main(["no-such-command"])
    assert "copy" in capsys.readouterr().err
