"""docker-compose.yml cannot run here (no Docker engine), so its contract is checked by reading it."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from adgen.core.config import Settings
from adgen.streams.topics import ALL_TOPICS

ROOT = Path(__file__).resolve().parents[1]
_DEFAULTED_VAR = re.compile(r"\$\{(\w+):-([^}]*)\}")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def settings_field_exists(env_name: str) -> bool:
    """ADGEN_SECTION__FIELD -> Settings.section.field (nested with `__`)."""
    parts = env_name.removeprefix("ADGEN_").lower().split("__")
    model: type[BaseModel] = Settings
    for i, part in enumerate(parts):
        field = model.model_fields.get(part)
        if field is None:
            return False
        if i < len(parts) - 1:
            annotation = field.annotation
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                return False
            model = annotation
    return True


def test_stack_has_kraft_kafka_redis_topic_init_init_and_worker(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"kafka", "redis", "topic-init", "init", "worker"}
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]  # KRaft: no ZooKeeper service
    assert kafka["environment"]["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"
    assert "29092:29092" in kafka["ports"] and "6379:6379" in services["redis"]["ports"]
    worker_env = services["worker"]["environment"]
    published = {port.split(":")[1] for port in services["worker"]["ports"]}
    assert published == {worker_env["ADGEN_WORKER__WEB_PORT"], worker_env["ADGEN_WORKER__METRICS_PORT"]}
    assert services["worker"]["command"] == ["adgen", "worker"]
    assert services["worker"]["build"]["dockerfile"] == "docker/Dockerfile"


def test_long_running_services_have_health_checks_and_the_worker_waits_for_them(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in ("kafka", "redis", "worker"):
        check = services[name]["healthcheck"]
        assert check["test"][0] in {"CMD", "CMD-SHELL"} and check["retries"] >= 3
    assert services["worker"]["depends_on"] == {
        "kafka": {"condition": "service_healthy"},
        "redis": {"condition": "service_healthy"},
        "topic-init": {"condition": "service_completed_successfully"},
        "init": {"condition": "service_completed_successfully"},
    }
    assert services["topic-init"]["depends_on"] == {"kafka": {"condition": "service_healthy"}}


def test_init_runs_adgen_init_once_on_the_volume_the_worker_serves_from(compose: dict[str, Any]) -> None:
    """The worker can only start from what `init` leaves on the shared volume: same image, same volume,
    same paths and registry; init is one-shot (tests/test_model_lifecycle.py runs its command without Docker)."""
    init, worker = compose["services"]["init"], compose["services"]["worker"]
    assert init["command"][:2] == ["adgen", "init"] and init["restart"] == "no"
    assert init["image"] == worker["image"] and init["build"] == worker["build"]
    assert init["volumes"] == [v for v in worker["volumes"] if v.startswith("adgen-var:")]
    shared = {k: v for k, v in init["environment"].items() if k.startswith(("ADGEN_PATHS__", "ADGEN_MODEL__"))}
    assert shared and all(worker["environment"][k] == v for k, v in shared.items())
    assert shared["ADGEN_MODEL__REGISTRY"].startswith(init["volumes"][0].split(":")[1])


@pytest.mark.parametrize("service", ["worker", "init"])
def test_every_adgen_env_var_of_the_worker_is_a_real_setting_and_validates(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch, service: str
) -> None:
    env = compose["services"][service]["environment"]
    adgen_vars = {name: str(value) for name, value in env.items() if name.startswith("ADGEN_")}
    unknown = [name for name in adgen_vars if not settings_field_exists(name)]
    assert unknown == [], f"not in Settings: {unknown}"
    for name, value in adgen_vars.items():
        monkeypatch.setenv(name, _DEFAULTED_VAR.sub(lambda m: m.group(2), value))
    settings = Settings()
    assert settings.model.registry is not None
    if service == "worker":
        assert settings.kafka.bootstrap_servers == "kafka:9092" and not settings.kafka.client_overrides.faust
        assert settings.redis.password is not None


def test_topic_init_creates_exactly_the_topics_of_the_contract(compose: dict[str, Any]) -> None:
    script = compose["services"]["topic-init"]["command"][0]
    created = {}
    for line in script.splitlines():
        words = shlex.split(line)
        if len(words) == 3 and words[0] == "create":
            created[words[1]] = int(words[2])
    assert created == {spec.name: spec.partitions for spec in ALL_TOPICS}
    assert "--if-not-exists" in script  # re-running the stack must not fail


def test_dockerfile_copies_every_package_dir_and_runs_the_worker() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    pyproject = (ROOT / "pyproject.toml").read_text()
    package_dirs = set(re.findall(r'"adgen\.\w+" = "(\w+)"', pyproject)) | {"adgen"}
    copied = set(re.findall(r"^COPY (\w+) ", dockerfile, flags=re.MULTILINE))
    assert package_dirs <= copied, f"Dockerfile misses {package_dirs - copied}"
    assert 'CMD ["adgen", "worker"]' in dockerfile
    assert re.search(r"^COPY configs ", dockerfile, flags=re.MULTILINE)  # `adgen init --train-config configs/...`
