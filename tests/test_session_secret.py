"""Where the session secret comes from (`tap/runtime/session_secret.py`): the environment, else
a file beside the database made once and read ever after; a short one stops the server."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from tap.config import ConfigError
from tap.runtime.session_secret import ENV_VAR, load_session_secret, secret_path


def test_without_the_env_var_a_private_file_beside_the_db_is_made_once(tmp_path: Path) -> None:
    db = str(tmp_path / "data" / "tap.db")
    first = load_session_secret(db, {})
    path = tmp_path / "data" / "session.secret"
    assert secret_path(db) == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 64 and bytes.fromhex(first.decode())  # 32 random bytes, as hex
    assert load_session_secret(db, {}) == first  # a restart reads the same one
    assert [p.name for p in path.parent.iterdir()] == ["session.secret"]  # no temporary left


def test_processes_starting_at_once_all_read_the_one_secret(tmp_path: Path) -> None:
    db = str(tmp_path / "tap.db")
    found: list[bytes] = []
    go = threading.Barrier(8)

    def start() -> None:
        go.wait()
        found.append(load_session_secret(db, {}))

    threads = [threading.Thread(target=start) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(found) == 8 and len(set(found)) == 1 and len(found[0]) == 64


def test_the_env_var_wins_and_the_files_content_is_a_valid_value_for_it(tmp_path: Path) -> None:
    db = str(tmp_path / "tap.db")
    from_file = load_session_secret(db, {})
    given = "k" * 40
    assert load_session_secret(db, {ENV_VAR: given}) == given.encode()
    # Moving a host from the file to the env var keeps every token valid.
    assert load_session_secret(db, {ENV_VAR: from_file.decode() + "\n"}) == from_file
    assert not (tmp_path / "other").exists()
    assert load_session_secret(str(tmp_path / "other" / "tap.db"), {ENV_VAR: given}) == b"k" * 40
    assert not (tmp_path / "other" / "session.secret").exists()  # none made when the env gives one


@pytest.mark.parametrize("value", ["short", "x" * 31, " " + "x" * 31 + "\n"])
def test_a_short_env_secret_refuses_to_start(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError, match=ENV_VAR):
        load_session_secret(str(tmp_path / "tap.db"), {ENV_VAR: value})
    assert list(tmp_path.iterdir()) == []  # and no file was made in its place


@pytest.mark.parametrize("value", ["", " ", "\n"])
def test_a_blank_env_secret_counts_as_unset(tmp_path: Path, value: str) -> None:
    """Compose passes `${TAP_SESSION_SECRET:-}` as an empty value when the host has none."""
    db = str(tmp_path / "tap.db")
    assert load_session_secret(db, {ENV_VAR: value}) == load_session_secret(db, {})
    assert (tmp_path / "session.secret").exists()


def test_a_short_secret_file_refuses_to_start(tmp_path: Path) -> None:
    (tmp_path / "session.secret").write_text("abc\n")
    with pytest.raises(ConfigError, match=r"session\.secret"):
        load_session_secret(str(tmp_path / "tap.db"), {})
