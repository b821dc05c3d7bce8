"""Encryption at rest of a backup archive, with age (the ``pyrage`` binding of the rage
implementation): X25519 recipients encrypt, the matching identity (a key file holding
``AGE-SECRET-KEY-1…``) decrypts. A key file's own public key is always a recipient, so the key
that restores is the key that was named at backup time; further ``age1…`` recipients (an
offline escrow key, say) may be added."""

from __future__ import annotations

import os
from pathlib import Path

import pyrage  # a compiled binding without type stubs (ignore_missing_imports)

from registry import InvalidInput

AGE_MAGIC = b"age-encryption.org/v1\n"
"""How every age file starts."""


def generate_key_file(path: Path) -> str:
    """Write a new identity to ``path`` (mode 0600, refused if it exists); its public key."""
    identity = pyrage.x25519.Identity.generate()
    public = str(identity.to_public())
    text = f"# sessionmesh backup key; public key: {public}\n{identity}\n"
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise InvalidInput(f"{path} exists: a key file is never overwritten") from None
    with os.fdopen(descriptor, "w", encoding="ascii") as file:
        file.write(text)
        file.flush()
        os.fsync(file.fileno())
    return public


def _identity(key_file: Path) -> object:
    try:
        lines = key_file.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeError) as error:
        raise InvalidInput(f"cannot read the key file {key_file}: {error}") from None
    secrets = [line.strip() for line in lines if line.strip().startswith("AGE-SECRET-KEY-")]
    if len(secrets) != 1:
        raise InvalidInput(f"{key_file} holds no age identity (AGE-SECRET-KEY-1…)")
    try:
        return pyrage.x25519.Identity.from_str(secrets[0])
    except pyrage.IdentityError:
        raise InvalidInput(f"{key_file} holds no valid age identity") from None


def recipients_of(key_file: Path | None, recipients: list[str]) -> list[object]:
    """The recipients an archive is encrypted to: the key file's public key, and each of
    ``recipients`` (``age1…``)."""
    parsed = []
    if key_file is not None:
        parsed.append(_identity(key_file).to_public())  # type: ignore[attr-defined]
    for text in recipients:
        try:
            parsed.append(pyrage.x25519.Recipient.from_str(text.strip()))
        except pyrage.RecipientError:
            raise InvalidInput(f"{text!r} is not an age recipient (age1…)") from None
    if not parsed:
        raise InvalidInput(
            "no key to encrypt with: give --key-file (or --recipient), or ask for --no-encrypt"
        )
    return parsed


def encrypt_file(source: Path, target: Path, recipients: list[object]) -> None:
    """Encrypt ``source`` into ``target`` (streamed)."""
    with source.open("rb") as reader, target.open("wb") as writer:
        pyrage.encrypt_io(reader, writer, recipients)
        writer.flush()
        os.fsync(writer.fileno())


def decrypt_file(source: Path, target: Path, key_file: Path | None) -> None:
    """Decrypt ``source`` into ``target`` (streamed); ``InvalidInput`` with a clear message
    for a missing or wrong key, or an archive damaged or cut short."""
    if key_file is None:
        raise InvalidInput("the archive is encrypted: give its --key-file")
    identity = _identity(key_file)
    try:
        with source.open("rb") as reader, target.open("wb") as writer:
            pyrage.decrypt_io(reader, writer, [identity])
    except pyrage.DecryptError as error:
        raise InvalidInput(
            f"the archive cannot be decrypted with {key_file}: it was not encrypted to this key, "
            f"or its header is damaged ({error})"
        ) from None
    except OSError:  # decrypt_io's answer to a chunk that fails its authentication
        raise InvalidInput(
            "the archive is damaged or cut short: a part of it fails its authentication"
        ) from None


def is_encrypted(path: Path) -> bool:
    """Whether ``path`` is an age file."""
    with path.open("rb") as file:
        return file.read(len(AGE_MAGIC)) == AGE_MAGIC
