"""Certificates, keys and CA bundles named in the config, loaded into ssl contexts.

ssl's own errors name neither the config key nor the file ("[SSL] PEM lib"); these raise an
`OSError` whose message names both, at start, on a reload and in ``check-config``.
"""

from __future__ import annotations

import ssl


def _no_passphrase() -> bytes:
    # With a password callback an encrypted key fails at once; without one, OpenSSL asks for
    # a passphrase on the terminal, and a reload would wait for it on the event loop.
    return b""


def load_pair(context: ssl.SSLContext, cert_file: str, key_file: str | None, prefix: str) -> None:
    """``cert_file`` and its key into ``context``; ``prefix`` is where they sit in the config
    (``listen_tls``, ``primary.tls``)."""
    try:
        context.load_cert_chain(cert_file, key_file, password=_no_passphrase)
    except OSError as error:  # ssl.SSLError included
        raise OSError(_pair_problem(cert_file, key_file, prefix, error)) from None


def load_ca(context: ssl.SSLContext, ca_file: str, key: str) -> None:
    """The CA bundle at ``ca_file`` (the config's ``key``) into ``context``."""
    try:
        context.load_verify_locations(cafile=ca_file)
    except OSError as error:
        reason = "no PEM certificate in it" if isinstance(error, ssl.SSLError) else None
        raise OSError(f"{key}: {ca_file}: {reason or error.strerror or error}") from None


def _pair_problem(cert_file: str, key_file: str | None, prefix: str, error: OSError) -> str:
    cert = f"{prefix}.cert_file: {cert_file}"
    key = f"{prefix}.key_file: {key_file}" if key_file else cert
    if not isinstance(error, ssl.SSLError):  # a file that cannot be read (gone since the start)
        for name, path in ((cert, cert_file), (key, key_file or cert_file)):
            try:
                with open(path, "rb"):
                    pass
            except OSError as unreadable:
                return f"{name}: {unreadable.strerror or unreadable}"
        return f"{cert}: {error.strerror or error}"
    if error.reason == "KEY_VALUES_MISMATCH":
        return f"{key}: not the private key of {prefix}.cert_file"
    try:
        ssl.create_default_context().load_verify_locations(cafile=cert_file)
    except ssl.SSLError:
        return f"{cert}: not a PEM certificate"
    return f"{key}: not a PEM private key, or one encrypted with a passphrase (not supported)"
