"""distill/cli.py: bad input and OS errors end as one scrubbed line on stderr and exit status 2."""

from __future__ import annotations

import pytest

from distill import cli
from eval import report
from eval.io import DistillError


@pytest.mark.parametrize("error, shown", [
    (DistillError("server said: 401 for Authorization: Bearer sk-live-abcdefghijklmnopqrstuv"), "<redacted>"),
    (PermissionError(13, "Permission denied", "/srv/out/report.json"), "/srv/out/report.json: Permission denied"),
])
def test_errors_exit_2_with_one_line_and_no_secret(monkeypatch, capsys, error, shown):
    def fails(args):
        raise error

    monkeypatch.setattr(report, "score_cli", fails)
    assert cli.main(["score", "--tasks", "t.jsonl", "--traces", "x.jsonl", "--out", "o"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("distill score: error: ") and shown in err and err.count("\n") == 1
    assert "sk-live-abcdefghijklmnopqrstuv" not in err


def test_unknown_flags_are_refused_by_every_command_but_train(capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["score", "--tasks", "t", "--traces", "x", "--out", "o", "--bogus"])
    assert e.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
