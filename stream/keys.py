"""CURVE key pairs, and the keys each process puts on its sockets.

ZeroMQ CURVE (CurveZMQ: Curve25519 key exchange, then every message
encrypted and authenticated) protects every link when a process is given
``--keys DIR``. The convention, one keys folder per machine:

* ``DIR/NAME.key_secret`` is this process's key pair (keep it private; it is
  written with mode 0600). NAME is ``--key-name``, by default the process's
  role: ``capture``, ``worker``, or ``client`` for watch and record.
* ``DIR/*.key`` are public keys. Every public key in the allow folder
  (``--allow``, default DIR) may connect to the socket a process binds
  (capture's frames socket, the worker's scores socket); a client without
  one of them gets nothing.
* A client takes the public key of the server it connects to from
  ``DIR/<server>.key`` (``capture.key`` for the worker, ``worker.key`` for
  watch and record), or from ``--server-key FILE``.

``fetalhead keys DIR`` makes the three default pairs (capture, worker,
client) in one folder, which is all a single machine needs; for several
machines, make each pair where it is used and copy only the ``.key`` files.
The allow list is read when a process starts.

``ServerKeys`` and ``ClientKeys`` are what ``stream.net.socket`` puts on a
socket; ``server_keys`` and ``client_keys`` resolve a process's settings to
them, with a one-line ConfigError for anything missing or malformed;
``make_keys`` writes new pairs. The ``*_setting`` functions declare the key
fields of every process's settings dataclass, with their help text.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Sequence

import zmq
import zmq.auth

from models.errors import ConfigError
from models.settings import setting

DEFAULT_NAMES = ("capture", "worker", "client")
SECRET_SUFFIX = ".key_secret"
PUBLIC_SUFFIX = ".key"
_KEYS_HELP = (f"turn CURVE encryption on: folder holding this process's NAME{SECRET_SUFFIX} and the peers' "
              f"public {PUBLIC_SUFFIX} files (make them with fetalhead keys)")


@dataclasses.dataclass(frozen=True)
class ServerKeys:
    """A binding socket's CURVE keys: its own pair (z85 bytes) and the client keys allowed to connect."""

    public: bytes
    secret: bytes
    allow: Path
    allowed: frozenset[bytes] = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class ClientKeys:
    """A connecting socket's CURVE keys: its own pair and the server's public key (z85 bytes)."""

    public: bytes
    secret: bytes = dataclasses.field(repr=False)
    server: bytes = b""


def _need_curve() -> None:
    if not zmq.has("curve"):
        raise ConfigError("keys: this libzmq was built without CURVE support; install pyzmq's own wheel")


def read_key_pair(path: Path) -> tuple[bytes, bytes]:
    """(public, secret) z85 keys from a ``NAME.key_secret`` file; ConfigError when it has none."""
    try:
        public, secret = zmq.auth.load_certificate(path)
    except OSError:
        raise ConfigError(f"keys: {path} not found (make key pairs with: fetalhead keys {path.parent} "
                          f"--name {path.name.removesuffix(SECRET_SUFFIX)})") from None
    except ValueError:
        raise ConfigError(f"keys: {path} is not a key file (no public-key line)") from None
    if not secret:
        raise ConfigError(f"keys: {path} holds no secret key (give the NAME{SECRET_SUFFIX} file, not NAME.key)")
    return public, secret


def read_public_key(path: Path) -> bytes:
    """The z85 public key of a ``.key`` (or ``.key_secret``) file; ConfigError when it has none."""
    try:
        public, _ = zmq.auth.load_certificate(path)
    except OSError:
        raise ConfigError(f"server_key: {path} not found (copy the server's public .key file there)") from None
    except ValueError:
        raise ConfigError(f"server_key: {path} is not a key file (no public-key line)") from None
    return public


def read_allow_list(folder: Path) -> frozenset[bytes]:
    """Every public key in ``folder``'s ``*.key`` files; ConfigError for a missing folder or a bad file."""
    if not folder.is_dir():
        raise ConfigError(f"allow: {folder} is not a folder of public .key files")
    keys = set()
    for path in sorted(folder.glob(f"*{PUBLIC_SUFFIX}")):
        try:
            public, _ = zmq.auth.load_certificate(path)
        except ValueError:
            raise ConfigError(f"allow: {path} is not a key file (no public-key line)") from None
        keys.add(public)
    if not keys:
        raise ConfigError(f"allow: {folder} holds no public .key file, so no client could connect")
    return frozenset(keys)


def check_options(keys: Path | None, **given: object) -> None:
    """ConfigError when a key option other than ``keys`` is given without ``keys``."""
    for name, value in given.items():
        if value is not None and keys is None:
            raise ConfigError(f"{name}: needs keys (--keys DIR) to turn CURVE on")


def server_keys(keys: Path | None, name: str, allow: Path | None = None) -> ServerKeys | None:
    """The keys of a binding socket: ``keys/name.key_secret``, clients allowed from ``allow`` (default ``keys``).

    None when ``keys`` is None (no CURVE).
    """
    check_options(keys, allow=allow)
    if keys is None:
        return None
    _need_curve()
    public, secret = read_key_pair(Path(keys) / f"{name}{SECRET_SUFFIX}")
    folder = Path(allow) if allow is not None else Path(keys)
    return ServerKeys(public, secret, folder, read_allow_list(folder))


def client_keys(keys: Path | None, name: str, server: str, server_key: Path | None = None) -> ClientKeys | None:
    """The keys of a connecting socket: ``keys/name.key_secret`` and the server's ``server_key``
    (default ``keys/server.key``). None when ``keys`` is None (no CURVE)."""
    check_options(keys, server_key=server_key)
    if keys is None:
        return None
    _need_curve()
    public, secret = read_key_pair(Path(keys) / f"{name}{SECRET_SUFFIX}")
    path = Path(server_key) if server_key is not None else Path(keys) / f"{server}{PUBLIC_SUFFIX}"
    return ClientKeys(public, secret, read_public_key(path))


def keys_setting(help: str = _KEYS_HELP) -> Any:
    """The ``keys`` field of a process's settings: None is no CURVE."""
    return setting(None, help, shown="off")


def key_name_setting(role: str) -> Any:
    """The ``key_name`` field: None uses the process's ``role`` (``capture``, ``worker``, ``client``)."""
    return setting(None, "NAME of this process's key pair in --keys", shown=role)


def allow_setting() -> Any:
    """The ``allow`` field of a binding process: None allows the public keys in ``keys``."""
    return setting(None, f"folder of the public {PUBLIC_SUFFIX} files of clients allowed to connect", shown="--keys")


def server_key_setting(server: str) -> Any:
    """The ``server_key`` field of a connecting process: None is ``keys/<server>.key``."""
    return setting(None, "public key file of the server to connect to", shown=f"KEYS/{server}{PUBLIC_SUFFIX}")


def make_keys(folder: Path, names: Sequence[str], *, force: bool = False) -> list[Path]:
    """Write a key pair ``NAME.key`` + ``NAME.key_secret`` (mode 0600) per name; returns the secret files.

    Existing files are a ConfigError unless ``force``: overwriting a key
    pair locks out every peer that holds its old public key.
    """
    _need_curve()
    for name in names:
        if not name or any(c in name for c in "/\\") or name.startswith("."):
            raise ConfigError(f"name: {name!r} must be a plain file name (e.g. worker)")
    folder.mkdir(parents=True, exist_ok=True)
    existing = [folder / f"{n}{s}" for n in names for s in (PUBLIC_SUFFIX, SECRET_SUFFIX)
                if (folder / f"{n}{s}").exists()]
    if existing and not force:
        raise ConfigError(f"keys: {existing[0]} exists; give --force to replace it (peers holding the old "
                          f"public key are then refused)")
    made = []
    for name in names:
        # The secret file must never be readable by others, not even between creation and chmod.
        old_umask = os.umask(0o077)
        try:
            _, secret = zmq.auth.create_certificates(folder, name)
        finally:
            os.umask(old_umask)
        os.chmod(folder / f"{name}{PUBLIC_SUFFIX}", 0o644)
        made.append(Path(secret))
    return made
