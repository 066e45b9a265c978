"""`tessera keygen`: a manifest with only the public key on stdout, the private key in a new 0600 file."""

from __future__ import annotations

import datetime
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tessera import cli, keygen
from tessera.api import meta
from tessera.api import serviceaccountkey as sak_api
from tessera.core import accountkeys
from tessera.crypto import keys

SUBJECT = "urn:tessera:serviceaccount:shop:billing"


def run(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> tuple[int, str, str]:
    code = cli.main(
        ["keygen", "--service-account", "billing", "--namespace", "shop", "--private-key-out", str(out), *extra]
    )
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("algorithm", keys.ALGORITHMS)
def test_keygen_prints_a_public_only_manifest_matching_the_private_key_file(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, algorithm: keys.Algorithm
) -> None:
    out = tmp_path / "billing.pem"
    code, stdout, stderr = run(capsys, out, "--algorithm", algorithm)
    assert code == 0
    assert "PRIVATE KEY" not in stdout
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    private = keys.load_private_pem(out.read_text())
    kid = keys.thumbprint(keys.public_of(private))

    document = yaml.safe_load(stdout)
    assert document["apiVersion"] == "iam.tessera.dev/v1alpha1" and document["kind"] == "ServiceAccountKey"
    sak = sak_api.ServiceAccountKey.model_validate(document)
    assert sak.namespace == "shop" and sak.spec.service_account_name == "billing"
    assert sak.spec.generate is None and sak.spec.public_key is not None and sak.spec.public_key.jwk is None
    assert keys.thumbprint(accountkeys.public_key_from_spec(sak.spec)) == kid
    assert re.fullmatch(r"billing-[a-z0-9-]{1,8}", sak.name) and sak.spec.expires_at is None
    assert kid in stderr and SUBJECT in stderr and algorithm in stderr


def test_keygen_sets_the_expiry_and_name(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    code, stdout, _ = run(capsys, tmp_path / "k.pem", "--expires-in-days", "30", "--name", "billing-laptop")
    sak = sak_api.ServiceAccountKey.model_validate(yaml.safe_load(stdout))
    assert code == 0 and sak.name == "billing-laptop" and sak.spec.expires_at is not None
    after = datetime.datetime.now(datetime.UTC)
    assert before + datetime.timedelta(days=30) <= sak.spec.expires_at <= after + datetime.timedelta(days=30)


def test_keygen_never_overwrites_a_file(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "existing.pem"
    out.write_text("keep me")
    code, stdout, stderr = run(capsys, out)
    assert code == 2 and stdout == "" and "exists already" in stderr
    assert out.read_text() == "keep me"


@pytest.fixture
def strict_umask() -> Iterator[None]:
    previous = os.umask(0o277)
    yield
    os.umask(previous)


@pytest.mark.usefixtures("strict_umask")
def test_keygen_file_mode_is_0600_whatever_the_umask(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "k.pem"
    assert run(capsys, out)[0] == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "extra",
    [
        ["--name", "Not_A_Name"],
        ["--namespace", "UPPER"],
        ["--service-account", "bad/name"],
    ],
)
def test_keygen_refuses_invalid_names_before_writing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: list[str]
) -> None:
    out = tmp_path / "k.pem"
    code, stdout, stderr = run(capsys, out, *extra)
    assert code == 2 and stdout == "" and "not a valid" in stderr
    assert not out.exists()


@pytest.mark.parametrize("days", ["0", "-1", "soon"])
def test_keygen_refuses_a_non_positive_expiry(capsys: pytest.CaptureFixture[str], tmp_path: Path, days: str) -> None:
    with pytest.raises(SystemExit) as exited:
        run(capsys, tmp_path / "k.pem", "--expires-in-days", days)
    assert exited.value.code == 2 and not (tmp_path / "k.pem").exists()


@pytest.mark.parametrize(
    ("account", "kid", "name"),
    [
        ("billing", "WuMtekKEVrQhWtvc", "billing-wumtekke"),
        ("billing", "ab_cd-EF", "billing-abcd-ef"),
        ("billing", "abcdefg-xyz", "billing-abcdefg"),
        ("billing", "________", "billing"),
        ("a" * 253, "ABCDEFGH", "a" * 244 + "-abcdefgh"),
    ],
)
def test_default_name_is_a_valid_object_name(account: str, kid: str, name: str) -> None:
    made = keygen.default_name(account, kid)
    assert made == name and len(made) <= 253 and re.match(meta.DNS1123_SUBDOMAIN, made)
