"""Signed packs and the trust policy.

The content hash of a pack (:mod:`immunity.learning.packs`) is a public recipe: anyone who edits a
pack can hash it again. So a pack can also carry an **ed25519 signature over its content hash**::

    "signature": {"alg": "ed25519", "key": "<public key, base64 of 32 bytes>",
                  "value": "<signature, base64 of 64 bytes>"}

``immunity pack keygen`` makes a key pair, ``immunity pack sign PACK --key KEY`` signs, and
``immunity pack verify PACK --key PUBLIC`` checks that the pack was signed by that key. Signing
and checking need the ``cryptography`` package (``pip install immunity[signing]``); without it a
signature cannot be checked and the pack counts as unsigned.

Trust policy (:func:`is_trusted`): a pack's *free text* (its patterns' hints and descriptions,
its intervention templates) may reach a model's prompt only when the pack is trusted:

- it was built in this process by code (a :class:`~immunity.models.PatternPack` object), or
- it is a file an installed plugin ships and registers (``immunity_register_pattern_packs``):
  the plugin is code the user installed, and its pack comes with it, or
- its signature verifies and its key is in ``Config.trusted_keys`` (or ``$IMMUNITY_TRUSTED_KEYS``,
  comma-separated).

Any other pack (a file named in ``packs=[...]``, one from ``immunity pack install``) still
matches and raises alarms, but its hints are replaced by the class's reviewed template. A pack
whose signature does not verify is refused at load (it was changed after signing).
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import Any

from immunity.errors import PackError

__all__ = ["ALG", "generate_keypair", "is_trusted", "load_private_key", "public_key_text", "read_public_key",
           "sign_document", "signer_of", "trusted_keys"]

ALG = "ed25519"
#: What is signed: this prefix and the content hash (a signature cannot be replayed elsewhere).
_DOMAIN = b"immunity-pattern-pack:v1:"


def _crypto() -> Any:
    try:
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - exercised in the core-only environment
        return None
    return ed25519


def _need_crypto() -> Any:
    mod = _crypto()
    if mod is None:
        raise PackError("signing and checking pack signatures needs the 'cryptography' package: "
                        "pip install 'immunity[signing]'")
    return mod


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: Any, size: int, what: str) -> bytes:
    if not isinstance(text, str) or len(text) > 200:
        raise PackError(f"{what}: expected base64 text")
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise PackError(f"{what}: not valid base64") from None
    if len(raw) != size:
        raise PackError(f"{what}: expected {size} bytes, got {len(raw)}")
    return raw


# ------------------------------------------------------------------------------------------ keys
def generate_keypair(path: str | os.PathLike[str]) -> tuple[Path, str]:
    """Write a new private key to ``path`` (PEM, mode 0600) and its public key to ``path.pub``;
    returns the private key's path and the public key text (what goes in ``trusted_keys``)."""
    ed25519 = _need_crypto()
    from cryptography.hazmat.primitives import serialization

    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    p = Path(path)
    if p.exists():
        raise PackError(f"{p} already exists; refusing to overwrite a key")
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    pub = public_key_text(key)
    Path(f"{p}.pub").write_text(pub + "\n", encoding="ascii")
    return p, pub


def load_private_key(path: str | os.PathLike[str]) -> Any:
    ed25519 = _need_crypto()
    from cryptography.hazmat.primitives import serialization

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PackError(f"cannot read key {path}: {exc.strerror or exc}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PackError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise PackError(f"{path} is not an ed25519 private key")
    return key


def public_key_text(private_key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _b64(raw)


def read_public_key(ref: str) -> str:
    """A public key given as its base64 text, or as a file holding it (``KEY.pub``) or holding
    the private key (its public half is taken)."""
    text = ref.strip()
    if len(text) <= 200 and not os.path.exists(text):
        _unb64(text, 32, "public key")
        return text
    p = Path(text)
    try:
        data = p.read_bytes()[:10_000]
    except OSError as exc:
        raise PackError(f"cannot read key {p}: {exc.strerror or exc}") from None
    if b"PRIVATE KEY" in data:
        return public_key_text(load_private_key(p))
    try:
        value = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise PackError(f"{p}: not a public key file") from None
    _unb64(value, 32, f"{p}")
    return value


# ------------------------------------------------------------------------------------------ signatures
def sign_document(doc: dict[str, Any], private_key: Any) -> dict[str, Any]:
    """Add a signature over ``doc["content_hash"]`` (the document must already be verified)."""
    digest = doc.get("content_hash")
    if not isinstance(digest, str):
        raise PackError("the pack has no content hash to sign")
    value = private_key.sign(_DOMAIN + digest.encode("ascii"))
    doc["signature"] = {"alg": ALG, "key": public_key_text(private_key), "value": _b64(value)}
    return doc


def signer_of(doc: dict[str, Any], *, source: str = "pack") -> str | None:
    """The public key that signed ``doc`` (checked), ``None`` when it is unsigned or the signature
    cannot be checked here (no ``cryptography``). Raises :class:`PackError` when a signature is
    present and wrong: the pack was changed after it was signed."""
    sig = doc.get("signature")
    if sig is None:
        return None
    if not isinstance(sig, dict) or sig.get("alg") != ALG:
        raise PackError(f"{source}: signature must be {{'alg': 'ed25519', 'key': ..., 'value': ...}}")
    key = _unb64(sig.get("key"), 32, f"{source}: signature key")
    value = _unb64(sig.get("value"), 64, f"{source}: signature value")
    ed25519 = _crypto()
    if ed25519 is None:
        return None
    from cryptography.exceptions import InvalidSignature

    digest = doc.get("content_hash")
    if not isinstance(digest, str):
        raise PackError(f"{source}: signed, but has no content hash")
    try:
        ed25519.Ed25519PublicKey.from_public_bytes(key).verify(value, _DOMAIN + digest.encode("ascii"))
    except InvalidSignature:
        raise PackError(f"{source}: the signature does not match the content; the pack was changed after it "
                        "was signed, refusing to load it") from None
    return str(sig["key"])


# ------------------------------------------------------------------------------------------ trust
def trusted_keys(config: Any = None) -> set[str]:
    """``Config.trusted_keys`` plus ``$IMMUNITY_TRUSTED_KEYS`` (comma-separated)."""
    keys = {str(k).strip() for k in (getattr(config, "trusted_keys", None) or []) if str(k).strip()}
    keys |= {k.strip() for k in os.environ.get("IMMUNITY_TRUSTED_KEYS", "").split(",") if k.strip()}
    return keys


def is_trusted(pack: Any, config: Any = None) -> bool:
    """May this pack's free text reach a prompt? (see the module's trust policy)"""
    origin = getattr(pack, "_origin", None)
    if origin is None or origin == "plugin":
        return True
    signer = getattr(pack, "_signer", None)
    return signer is not None and signer in trusted_keys(config)
