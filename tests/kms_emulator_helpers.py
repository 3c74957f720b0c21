"""The KMS emulator as a subprocess, and boto3 clients whose every answer is checked against
botocore's KMS service model (no member the output shape lacks, every value of its type)."""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from tests.proxy_process import XKS_PROXY

REGION = "us-east-1"
ACCESS_KEY_ID = "AKIDEXAMPLEDEVELOPER"


def shape_problems(value: Any, shape: Any, path: str = "") -> list[str]:
    """Where ``value`` (parsed JSON) breaks botocore ``shape``; empty when it conforms."""
    kind = shape.type_name
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: not an object"]
        problems = [f"{path}.{name}: not in {shape.name}" for name in value
                    if name not in shape.members]  # fmt: skip
        for name, item in value.items():
            if name in shape.members:
                problems += shape_problems(item, shape.members[name], f"{path}.{name}")
        return problems
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: not a list"]
        return [
            p for i, v in enumerate(value) for p in shape_problems(v, shape.member, f"{path}[{i}]")
        ]
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{path}: not a map"]
        return [p for k, v in value.items() for p in shape_problems(v, shape.value, f"{path}.{k}")]
    expected: dict[str, type | tuple[type, ...]] = {
        "string": str, "blob": str, "boolean": bool, "integer": int, "long": int,
        "timestamp": (int, float),
    }  # fmt: skip
    if not isinstance(value, expected[kind]):
        return [f"{path}: {value!r} is not a {kind}"]
    enum = shape.metadata.get("enum") if kind == "string" else None
    if enum and value not in enum:
        return [f"{path}: {value!r} not in {enum}"]
    return []


@dataclass
class Emulator:
    url: str
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)  # operations whose answers were checked
    reader: threading.Thread | None = None

    def client(self, retries: int = 3, region: str = REGION) -> Any:
        kms = boto3.client(
            "kms",
            endpoint_url=self.url,
            region_name=region,
            aws_access_key_id=ACCESS_KEY_ID,
            aws_secret_access_key="x",
            # The emulator validates as AWS does: let bad parameters reach it.
            config=Config(retries={"total_max_attempts": retries}, parameter_validation=False),
        )
        kms.meta.events.register("after-call.kms", self._check_answer)
        return kms

    def _check_answer(self, http_response: Any, model: Any, **_: Any) -> None:
        if http_response.status_code != 200:
            error = json.loads(http_response.content)
            assert set(error) == {"__type", "message"}, error
            codes = {shape.name for shape in model.error_shapes}
            # Every error an operation answers is one the model lists for it (or generic).
            assert error["__type"] in codes | {
                "ValidationException", "SerializationException", "ThrottlingException",
                "UnsupportedOperationException", "AccessDeniedException",
            }, (model.name, error)  # fmt: skip
            return
        answer = json.loads(http_response.content or b"{}")
        if model.output_shape is None:
            problems = [f"{model.name} has no output, answered {answer}"] if answer else []
        else:
            problems = shape_problems(answer, model.output_shape)
        assert problems == [], (model.name, problems)
        self.checked.append(model.name)


# The emulator binds port 0 and says which port it got (see tests/ports.py).
_ANNOUNCED = re.compile(r"KMS emulator on (http://\S+:\d+) ")


def start_emulator(db: Path, *extra: str) -> Emulator:
    process = subprocess.Popen(
        [XKS_PROXY, "kms-emulator", "--port", "0", "--db", str(db), *extra],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert process.stderr is not None
    emulator = Emulator("", process)
    for line in process.stderr:
        emulator.log.append(line)
        announced = _ANNOUNCED.search(line)
        if announced is not None:
            emulator.url = announced.group(1)
            # Keep draining the log, so a chatty emulator never blocks on a full pipe.
            emulator.reader = threading.Thread(
                target=_drain, args=(process, emulator.log), daemon=True
            )
            emulator.reader.start()
            return emulator
    raise AssertionError("the emulator did not start: " + "".join(emulator.log))


def _drain(process: subprocess.Popen[str], log: list[str]) -> None:
    assert process.stderr is not None
    for line in process.stderr:
        log.append(line)


def stop(emulator: Emulator) -> None:
    emulator.process.terminate()
    emulator.process.wait(timeout=30)
    if emulator.reader is not None:
        emulator.reader.join(timeout=10)
    assert emulator.process.stderr is not None
    emulator.process.stderr.close()
    # No request may have ended in an internal error (a 500 with a traceback in the log).
    assert not [line for line in emulator.log if "Traceback" in line], "".join(emulator.log)


def code(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Code"])


def message(error: pytest.ExceptionInfo[ClientError]) -> str:
    return str(error.value.response["Error"]["Message"])


def module_emulator() -> tuple[Any, Any]:
    """Two fixtures: one emulator (without a proxy) for the whole test module, and a boto3
    client of it for each test."""

    @pytest.fixture(scope="module")
    def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
        running = start_emulator(tmp_path_factory.mktemp("kms") / "kms.db")
        try:
            yield running
        finally:
            stop(running)

    @pytest.fixture
    def kms(emulator: Emulator) -> Any:
        return emulator.client()

    return emulator, kms


def new_key(kms: Any, **params: Any) -> str:
    return str(kms.create_key(**params)["KeyMetadata"]["KeyId"])
