"""Where the server secret that signs session tokens and login challenges comes from.

It decides the source and refuses a weak one: `TAP_SESSION_SECRET` from the environment when set
and not blank (at least 32 bytes; every process of a multi-host deployment must be given the same
one), else the file `session.secret` next to the database, made on first start and read on every
later one, so `make run` restarts and several processes on one host sign alike with no setup. It
leaves to its caller what the secret signs (`tap/sessions.py`).

The secret is the text's UTF-8 bytes, stripped of surrounding whitespace, in both cases: copying
the file's content into `TAP_SESSION_SECRET` keeps every token valid. Changing the secret (a new
value, or deleting the file) ends every session and outstanding challenge at once: everybody signs
in again. That is also how to revoke all sessions.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from tap.config import ConfigError
from tap.sessions import MIN_SECRET_BYTES

ENV_VAR: Final = "TAP_SESSION_SECRET"
FILE_NAME: Final = "session.secret"


def secret_path(db_path: str) -> Path:
    return Path(db_path).parent / FILE_NAME


def load_session_secret(db_path: str, environ: Mapping[str, str] | None = None) -> bytes:
    """The secret from `TAP_SESSION_SECRET`, else from `<dirname(db_path)>/session.secret`
    (created with 32 random bytes, as 64 hex digits, mode 0600, when missing). `ConfigError`
    when the one found is shorter than 32 bytes: a short secret would make every token
    guessable, so the server refuses to start rather than serve with it."""
    env = os.environ if environ is None else environ
    # Set but empty counts as unset (compose's `${TAP_SESSION_SECRET:-}`): the file is as secret.
    secret = env.get(ENV_VAR, "").strip().encode()
    if secret:
        if len(secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"{ENV_VAR}: {len(secret)} bytes, expected at least {MIN_SECRET_BYTES} "
                "(e.g. `openssl rand -hex 32`)"
            )
        return secret
    path = secret_path(db_path)
    if not path.exists():
        _create(path)
    secret = path.read_bytes().strip()
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"{path}: {len(secret)} bytes, expected at least {MIN_SECRET_BYTES} "
            "(delete the file to have a new one made: everybody signs in again)"
        )
    return secret


def _create(path: Path) -> None:
    """Write a new secret to `path` unless another process got there first.

    The secret is written whole to a private temporary file (O_CREAT | O_EXCL, mode 0600) and
    then hard-linked to its name, which fails if the name exists. So the name appears only with
    its full content: two processes starting at once never read a half-written secret, and the
    loser of the race reads the winner's (a bare O_EXCL create of the final name would be
    visible empty for a moment).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(MIN_SECRET_BYTES) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process made it first: theirs is the one every process reads
    finally:
        tmp.unlink(missing_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the name survives a power cut, or tokens would die with it
    finally:
        os.close(dir_fd)
