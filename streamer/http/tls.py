"""HTTPS: whether a certificate and key can serve, checked at start (--ssl-certfile, --ssl-keyfile)
so a bad pair is refused with its reason before the server binds its port."""

from __future__ import annotations

import ssl
from pathlib import Path


def tls_pair_problem(certfile: Path, keyfile: Path) -> str | None:
    """Why the pair cannot serve HTTPS, found by loading it as the server will; None if it can."""
    asked: list[int] = []  # OpenSSL asks for a password only for an encrypted key
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
            certfile, keyfile, password=lambda: asked.append(1) or ""
        )
    except (ssl.SSLError, OSError) as exc:
        if asked:
            return f"{keyfile} is encrypted; give a key without a password (openssl pkey)"
        if getattr(exc, "reason", None) == "KEY_VALUES_MISMATCH":
            return f"{keyfile} is not the private key of {certfile}; pass the pair made together"
        return (
            f"{certfile} and {keyfile} are not a PEM certificate and its key; make a pair as "
            "README's 'A phone on the LAN' shows"
        )
    return None
