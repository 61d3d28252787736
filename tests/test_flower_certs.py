"""scripts/flower_certs.sh: the SuperLink certificate names the hosts it is given and chains to
the CA; SuperNode private keys are readable by their owner only; bad arguments are named."""

from __future__ import annotations

import shutil
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[1] / "scripts" / "flower_certs.sh"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("openssl") is None or shutil.which("ssh-keygen") is None,
        reason="openssl and ssh-keygen are needed to make Flower credentials",
    ),
]


def certs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=120, check=False
    )


def openssl(*args: str) -> str:
    return subprocess.run(
        ["openssl", *args], capture_output=True, text=True, timeout=60, check=True
    ).stdout


def test_the_certificate_covers_loopback_and_every_host(tmp_path: Path) -> None:
    result = certs("link.example.org", "10.0.0.5", "--out", str(tmp_path), "--nodes", "3")
    assert result.returncode == 0, result.stderr
    names = openssl("x509", "-in", str(tmp_path / "server.pem"), "-noout", "-ext", "subjectAltName")
    for name in ("127.0.0.1", "DNS:localhost", "DNS:link.example.org", "IP Address:10.0.0.5"):
        assert name in names
    verified = openssl("verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "server.pem"))
    assert verified.strip().endswith("OK")
    assert sorted(p.name for p in tmp_path.glob("node-*")) == [
        "node-0", "node-0.pub", "node-1", "node-1.pub", "node-2", "node-2.pub",
    ]  # fmt: skip
    for private in ("node-0", "server.key", "ca.key"):
        assert stat.S_IMODE((tmp_path / private).stat().st_mode) == 0o600
    for public in ("node-0.pub", "server.pem", "ca.crt"):
        assert stat.S_IMODE((tmp_path / public).stat().st_mode) == 0o644
    assert (tmp_path / "node-0.pub").read_text().startswith("ecdsa-sha2-nistp384 ")


def test_a_bad_argument_is_named(tmp_path: Path) -> None:
    result = certs("--nodes", "two", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "--nodes must be a number, got 'two'" in result.stderr
    assert certs("--bogus").stderr.strip() == "flower_certs.sh: unknown option --bogus (see --help)"
