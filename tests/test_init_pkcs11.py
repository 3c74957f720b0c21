"""``xks-proxy init --backend pkcs11``: a working HSM deployment in one command, on SoftHSM2."""

from __future__ import annotations

import base64
import os
import subprocess
from pathlib import Path

import pytest

from tests.proxy_process import XKS_PROXY, ProxyProcess, close_all, connect, post
from tests.softhsm import USER_PIN, SoftHsm, find_module, make_softhsm
from xks_proxy.config import load_config

PIN_ENV = "XKS_TEST_INIT_PIN"
KEY_ID = "hsm-key-1"
METADATA = {
    "awsPrincipalArn": "arn:aws:iam::111122223333:user/Alice",
    "kmsKeyArn": "arn:aws:kms:us-east-1:111122223333:key/1",
    "kmsOperation": "Encrypt",
    "kmsRequestId": "init-pkcs11",
}


@pytest.fixture
def token(tmp_path: Path) -> SoftHsm:
    hsm = make_softhsm(tmp_path / "softhsm")
    hsm.init_token("xks")
    return hsm


def init(
    hsm: SoftHsm, directory: Path, *extra: str, pin: str | None = USER_PIN
) -> subprocess.CompletedProcess[str]:
    environment = {**os.environ, "SOFTHSM2_CONF": str(hsm.conf)}
    environment.pop(PIN_ENV, None)
    if pin is not None:
        environment[PIN_ENV] = pin
    return subprocess.run(
        [XKS_PROXY, "init", str(directory), "--backend", "pkcs11", "--module", str(hsm.module),
         "--token-label", "xks", "--pin-env", PIN_ENV, "--key-id", KEY_ID,
         "--port", "0", "--metrics-port", "0", "--admin-port", "0",
         *extra],
        capture_output=True, text=True, timeout=120, check=False, env=environment,
    )  # fmt: skip


def test_init_makes_a_deployment_that_serves_from_the_token(
    token: SoftHsm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = tmp_path / "dep"
    made = init(token, directory)
    assert made.returncode == 0, made.stderr
    assert "token 'xks'" in made.stdout
    assert not (directory / "kek.key").exists() and not (directory / "keys.db").exists()
    for written in directory.iterdir():
        if written.is_file():
            assert USER_PIN not in written.read_text(), written
    config_path = directory / "xks-proxy.toml"
    assert f'user_pin = "env:{PIN_ENV}"' in config_path.read_text()

    # A second init on the same token finds its keys there and makes no duplicates.
    again = init(token, tmp_path / "again")
    assert again.returncode == 0, again.stderr

    monkeypatch.setenv("SOFTHSM2_CONF", str(token.conf))
    monkeypatch.setenv(PIN_ENV, USER_PIN)
    credential = load_config(config_path).key_stores[0].credentials[0]
    base = "/keystores/dev/kms/xks/v1"
    try:
        with ProxyProcess(config_path) as proxy:
            plaintext = base64.b64encode(b"kept in the HSM").decode()
            status, encrypted = post(
                connect(proxy.port),
                f"{base}/keys/{KEY_ID}/encrypt",
                {
                    "requestMetadata": METADATA,
                    "plaintext": plaintext,
                    "encryptionAlgorithm": "AES_GCM",
                },
                credential,
            )
            assert status == 200, encrypted
            status, decrypted = post(
                connect(proxy.port),
                f"{base}/keys/{KEY_ID}/decrypt",
                {
                    "requestMetadata": {**METADATA, "kmsOperation": "Decrypt"},
                    "encryptionAlgorithm": "AES_GCM",
                    **{k: v for k, v in encrypted.items() if k != "encryptionAlgorithm"},
                },
                credential,
            )
            assert status == 200, decrypted
            assert decrypted["plaintext"] == plaintext
    finally:
        close_all()

    # `keys` manages the software store; on an HSM deployment it says what works instead.
    disable = subprocess.run(
        [XKS_PROXY, "keys", "disable", "--config", str(config_path), "--key-id", KEY_ID],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert disable.returncode == 1
    assert "disabled_keys" in disable.stderr and "Traceback" not in disable.stderr


@pytest.mark.parametrize(
    ("case", "extra", "pin", "expected"),
    [
        ("PIN variable unset", [], None, PIN_ENV),
        ("wrong PIN", [], "0000-wrong-pin", "login failed"),
        ("unknown token", ["--token-label", "absent"], USER_PIN, "no token"),
    ],
)
def test_init_refuses_and_writes_nothing(
    token: SoftHsm, tmp_path: Path, case: str, extra: list[str], pin: str | None, expected: str
) -> None:
    directory = tmp_path / "dep"
    result = init(token, directory, *extra, pin=pin)
    assert result.returncode == 2, (case, result.stderr)
    assert expected in result.stderr, (case, result.stderr)
    assert "Traceback" not in result.stderr
    if pin:
        assert pin not in result.stderr
    assert not directory.exists(), f"{case}: nothing may be written"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--backend", "pkcs11", "--module", "/usr/lib/nope.so"], "--token-label"),
        (["--module", "/usr/lib/nope.so"], "only with --backend pkcs11"),
        (
            ["--backend", "pkcs11", "--module", "/nope.so", "--token-label", "x", "--pin-env", "P"],
            "--module",
        ),
        (
            [
                "--backend",
                "pkcs11",
                "--module",
                "/nope.so",
                "--token-label",
                "x",
                "--pin-env",
                "1-x",
            ],
            "--pin-env",
        ),
    ],
)
def test_init_option_errors(tmp_path: Path, args: list[str], expected: str) -> None:
    result = subprocess.run(
        [XKS_PROXY, "init", str(tmp_path / "dep"), *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and expected in result.stderr, result.stderr
    assert not (tmp_path / "dep").exists()


def test_the_softhsm_example_works_as_its_comments_say(tmp_path: Path) -> None:
    """config/xks-proxy.softhsm2.example.toml and softhsm2.example.conf, step by step."""
    examples = Path(__file__).resolve().parents[1] / "config"
    token_dir = tmp_path / "tokens"
    token_dir.mkdir(mode=0o700)
    softhsm_conf = tmp_path / "softhsm2.conf"
    softhsm_conf.write_text(
        (examples / "softhsm2.example.conf")
        .read_text()
        .replace("/var/lib/xks-proxy/softhsm/tokens", str(token_dir))
    )
    config = tmp_path / "xks-proxy.toml"
    text = (examples / "xks-proxy.softhsm2.example.toml").read_text()
    module = find_module()
    text = text.replace("/usr/lib/softhsm/libsofthsm2.so", str(module))
    text = text.replace("port = 8080", "port = 0")
    config.write_text(text + "\n[metrics]\nport = 0\n")
    environment = {**os.environ, "SOFTHSM2_CONF": str(softhsm_conf), "XKS_HSM_PIN": USER_PIN}

    def step(*args: str) -> str:
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=60, check=False, env=environment
        )
        assert result.returncode == 0, (args, result.stderr)
        return result.stdout

    step("softhsm2-util", "--init-token", "--free", "--label", "xks", "--so-pin", "5528-so",
         "--pin", USER_PIN)  # fmt: skip
    step(XKS_PROXY, "pkcs11", "create-key", "--config", str(config), "--health")
    step(XKS_PROXY, "pkcs11", "create-key", "--config", str(config), "--label", "payments-key-1")
    created = step(XKS_PROXY, "credentials", "create", "--config", str(config))
    assert "RawSecretAccessKey" in created
    step(XKS_PROXY, "check-config", "--config", str(config))
    assert any(token_dir.iterdir()), "the token lives in the configured directory"
