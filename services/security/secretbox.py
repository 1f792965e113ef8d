"""Envelope encryption of secrets at rest (webhook signing secrets): AES-256-GCM, two layers.

Each secret gets its own random data key; the secret is encrypted with the data key, and the data
key is encrypted ("wrapped") with a key-encryption key from a ``Keyring`` (the keyring's signing
key is the one that wraps new secrets; every key in it unwraps). What is stored is one string:

    v1.<key id>.<base64url: nonce + wrapped data key>.<base64url: nonce + ciphertext>

so the key id travels beside the ciphertext. Both layers authenticate ``context`` (e.g. the
endpoint's scope and id) as associated data, so a ciphertext copied onto another endpoint does
not decrypt. Events and tables hold only this string; the plaintext exists in the notification
service's memory while it signs a delivery, and in the one answer that returns a generated secret.

Rotation: add a new key to the keyring and make it the signing one; new secrets are wrapped with
it, old ones still unwrap with their key, which must therefore stay in the keyring as long as an
event wrapped with it exists (the stream is immutable). Losing every key loses the secrets: their
endpoints must then be registered again with new ones.
"""

from __future__ import annotations

import base64
import binascii
import os
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from eventstore.integrity import Keyring

VERSION: Final = "v1"
NONCE_BYTES: Final = 12
DATA_KEY_BYTES: Final = 32


class SecretUnreadable(ValueError):
    """A sealed secret cannot be opened: unknown key, wrong context, or altered bytes."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def endpoint_context(card_id: str, endpoint_id: str) -> str:
    """The associated data of a webhook endpoint's secret: its scope and id (``""`` = operator)."""
    return f"webhook:{card_id or '*'}:{endpoint_id}"


def is_sealed(value: str) -> bool:
    """Tell whether ``value`` has the form of a sealed secret (not a plaintext one)."""
    return value.startswith(VERSION + ".") and value.count(".") == 3


def seal(keyring: Keyring, plaintext: str, context: str) -> str:
    """Encrypt ``plaintext`` under a fresh data key wrapped with the keyring's signing key."""
    key_id = keyring.signing_id
    aad = f"{VERSION}|{key_id}|{context}".encode()
    data_key = AESGCM.generate_key(bit_length=DATA_KEY_BYTES * 8)
    key_nonce, data_nonce = os.urandom(NONCE_BYTES), os.urandom(NONCE_BYTES)
    wrapped = AESGCM(keyring.keys[key_id][:32]).encrypt(key_nonce, data_key, aad)
    ciphertext = AESGCM(data_key).encrypt(data_nonce, plaintext.encode(), aad)
    return ".".join([VERSION, key_id, _b64(key_nonce + wrapped), _b64(data_nonce + ciphertext)])


def open_sealed(keyring: Keyring, sealed: str, context: str) -> str:
    """Decrypt a sealed secret; ``SecretUnreadable`` if it cannot be (never a wrong plaintext)."""
    try:
        version, key_id, wrapped_part, data_part = sealed.split(".")
    except ValueError:
        raise SecretUnreadable("not a sealed secret") from None
    key = keyring.keys.get(key_id)
    if version != VERSION or key is None:
        raise SecretUnreadable(f"no key {key_id!r} to open this secret with")
    aad = f"{version}|{key_id}|{context}".encode()
    try:
        wrapped, data = _unb64(wrapped_part), _unb64(data_part)
        data_key = AESGCM(key[:32]).decrypt(wrapped[:NONCE_BYTES], wrapped[NONCE_BYTES:], aad)
        plain = AESGCM(data_key).decrypt(data[:NONCE_BYTES], data[NONCE_BYTES:], aad)
    except (InvalidTag, ValueError, binascii.Error):
        raise SecretUnreadable(
            "the sealed secret does not open (altered, or another context)"
        ) from None
    return plain.decode()
