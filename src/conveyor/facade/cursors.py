"""Opaque listing cursors: what callers page with instead of the engine's positions.

An engine's position says where a page ended in its own index: a SQLite cursor holds a
global row id, an offset or a score may show how many other jobs lie in between. A
tenant must learn nothing about another tenant's jobs from them (issue 12 item 10), and
must not be able to hand the engine a position of its own making. So the facade hands
out a sealed token instead:

    token = base64url(version | nonce | ciphertext | tag)

* the position is encrypted: a keystream of HMAC-SHA256(enc key, nonce | block number)
  blocks (a PRF in counter mode, the standard library only) XORed with the position,
  padded to a fixed block so its length says nothing either; the random nonce makes two
  cursors of the same position look unrelated;
* the tag is HMAC-SHA256(mac key, version | nonce | ciphertext | queue | state | tenant),
  length-prefixed parts, cut to 16 bytes (encrypt-then-MAC): a token changed in any bit,
  or used for another queue, state or tenant, is refused before anything is decrypted.

Why encrypt rather than keep positions server-side in a bounded map: the token then
works on every API process that shares the secret (several replicas behind one address,
a restart), nothing grows with the number of listings, and there is no eviction to
break a client's paging. The keys come from `cursor_secret` (CONVEYOR_CURSOR_SECRET); by
default a random secret per process, so cursors do not outlive it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import struct

from ..errors import InvalidArgument

_VERSION = b"\x01"
_NONCE = 12
_TAG = 16
_BLOCK = 64  # plaintext is padded to a multiple of this (1 length byte + position)
_MAX_POSITION = 255  # bytes; engines' positions are under 64


def _kdf(secret: bytes, label: bytes) -> bytes:
    return hmac.digest(secret, b"conveyor cursor " + label, hashlib.sha256)


def _part(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogatepass")
    return struct.pack(">I", len(raw)) + raw


def _refused(token: str) -> InvalidArgument:
    return InvalidArgument(
        f"cursor {token[:40]!r} is not one this API returned for this queue, state and "
        "tenant (or it was issued before the API restarted): pass back the cursor of the "
        "previous page unchanged, or none for the first page"
    )


class CursorSealer:
    """Seals engine positions into opaque tokens bound to (queue, state, tenant).

    Args:
        secret: the key material (any length; 32 random bytes or more). None: a random
            secret for this process only.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        key = secret if secret else secrets.token_bytes(32)
        self._enc = _kdf(key, b"encryption")
        self._mac = _kdf(key, b"authentication")

    def _keystream(self, nonce: bytes, n: int) -> bytes:
        blocks = (n + 31) // 32
        return b"".join(
            hmac.digest(self._enc, nonce + struct.pack(">I", i), hashlib.sha256)
            for i in range(blocks)
        )[:n]

    def _tag(self, head: bytes, context: tuple[str, str, str | None]) -> bytes:
        queue, state, tenant = context
        bound = (
            _part(queue) + _part(state) + (b"\x00" if tenant is None else b"\x01" + _part(tenant))
        )
        return hmac.digest(self._mac, head + bound, hashlib.sha256)[:_TAG]

    def seal(self, position: str, *, queue: str, state: str, tenant: str | None) -> str:
        """The token a caller pages with for the engine's `position`.

        Args:
            position: the engine's cursor.
            queue: the listed queue.
            state: the listed state.
            tenant: the tenant filter (None: all tenants).

        Returns:
            A URL-safe token (no padding), the same length for every position.

        Raises:
            ValueError: the position is longer than any engine hands out.
        """
        raw = position.encode("utf-8")
        if len(raw) > _MAX_POSITION:
            raise ValueError(f"engine cursor of {len(raw)} bytes is longer than {_MAX_POSITION}")
        plain = bytes([len(raw)]) + raw
        plain += b"\x00" * (-len(plain) % _BLOCK)
        nonce = secrets.token_bytes(_NONCE)
        cipher = bytes(
            a ^ b for a, b in zip(plain, self._keystream(nonce, len(plain)), strict=True)
        )
        head = _VERSION + nonce + cipher
        token = head + self._tag(head, (queue, state, tenant))
        return base64.urlsafe_b64encode(token).rstrip(b"=").decode("ascii")

    def open(self, token: str, *, queue: str, state: str, tenant: str | None) -> str:
        """The engine position inside `token`, if it was sealed here for this listing.

        Args:
            token: what the caller passed back.
            queue: the listed queue.
            state: the listed state.
            tenant: the tenant filter (None: all tenants).

        Returns:
            The engine's cursor.

        Raises:
            InvalidArgument: the token is malformed, forged, altered, sealed under
                another secret, or sealed for another queue, state or tenant.
        """
        if not isinstance(token, str) or not token.isascii() or len(token) > 1024:
            raise _refused(str(token))
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except (binascii.Error, ValueError):
            raise _refused(token) from None
        body = len(raw) - 1 - _NONCE - _TAG
        if raw[:1] != _VERSION or body <= 0 or body % _BLOCK:
            raise _refused(token)
        head, tag = raw[:-_TAG], raw[-_TAG:]
        if not hmac.compare_digest(tag, self._tag(head, (queue, state, tenant))):
            raise _refused(token)
        nonce, cipher = head[1 : 1 + _NONCE], head[1 + _NONCE :]
        plain = bytes(
            a ^ b for a, b in zip(cipher, self._keystream(nonce, len(cipher)), strict=True)
        )
        return plain[1 : 1 + plain[0]].decode("utf-8")
