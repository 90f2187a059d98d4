"""`tunelab keys` and `tunelab serve` on the command line: keys are shown once and stored hashed, and
the server will not start without one."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.serving.auth import digest
from tunelab.serving.config import load_serve_config
from tunelab.serving.store import Store

runner = CliRunner()


def test_keys_create_list_revoke(tmp_path: Path) -> None:
    created = runner.invoke(app, ["keys", "create", "--root", str(tmp_path), "--name", "ci"])
    assert created.exit_code == 0, created.output
    key = created.stdout.strip().splitlines()[-1]
    assert key.startswith("tl-") and len(key) > 40
    (row,) = Store(load_serve_config(None, root=tmp_path).database).all_keys()
    assert row["sha256"] == digest(key) and key not in str(row)  # the key itself is kept nowhere
    listed = runner.invoke(app, ["keys", "list", "--root", str(tmp_path)])
    assert (
        row["id"] in listed.stdout
        and "ci" in listed.stdout
        and "active" in listed.stdout
        and key not in listed.stdout
    )
    assert runner.invoke(app, ["keys", "revoke", row["id"], "--root", str(tmp_path)]).exit_code == 0
    assert "revoked" in runner.invoke(app, ["keys", "list", "--root", str(tmp_path)]).stdout
    again = runner.invoke(app, ["keys", "revoke", row["id"], "--root", str(tmp_path)])
    assert again.exit_code == 1 and "no active key" in again.output


def test_serve_refuses_to_start_without_a_key(tmp_path: Path) -> None:
    result = runner.invoke(app, ["serve", "--root", str(tmp_path), "--model", "m=/nowhere"])
    assert result.exit_code == 1
    assert "no API key yet" in result.output and f"tunelab keys create --root {tmp_path}" in result.output
    bad = runner.invoke(app, ["serve", "--root", str(tmp_path), "--model", "no-path"])
    assert bad.exit_code == 1 and "expected NAME=PATH" in bad.output
