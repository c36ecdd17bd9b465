"""A throw-away certificate authority and server certificate for TLS tests, made with openssl."""

import os
import pwd
import subprocess
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_certificates(folder: Path, owner: str | None = None) -> Path:
    """A throw-away authority and a server certificate for 127.0.0.1; returns the CA file."""
    folder.mkdir(parents=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
             "ca.crt", "-subj", "/CN=crucible test CA", "-days", "1", cwd=folder)  # fmt: skip
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
             "server.csr", "-subj", "/CN=127.0.0.1", cwd=folder)  # fmt: skip
    (folder / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
             "-CAcreateserial", "-out", "server.crt", "-days", "1", "-extfile", "san.ext",
             cwd=folder)  # fmt: skip
    # The server refuses a key that others can read, and reads it as its own user.
    key = folder / "server.key"
    key.chmod(0o600)
    if owner is not None and os.geteuid() == 0:
        entry = pwd.getpwnam(owner)
        for name in ("server.key", "server.crt"):
            os.chown(folder / name, entry.pw_uid, entry.pw_gid)
        folder.chmod(0o755)
    return folder / "ca.crt"
