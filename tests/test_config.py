from pathlib import Path

import pytest
from pydantic import ValidationError

from adgen.core.config import Settings, load_settings


def test_env_overrides_nested_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADGEN_KAFKA__BOOTSTRAP_SERVERS", "broker:29092")
    monkeypatch.setenv("ADGEN_BUDGET__USER_GROUPS", "7")
    settings = Settings()
    assert settings.kafka.bootstrap_servers == "broker:29092"
    assert settings.budget.user_groups == 7


def test_secrets_are_masked_in_printed_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADGEN_REDIS__PASSWORD", "hunter2")
    monkeypatch.setenv("ADGEN_KAFKA__SASL_PASSWORD", "s3cret")
    shown = str(Settings().masked())
    assert "hunter2" not in shown and "s3cret" not in shown
    assert Settings().redis.password.get_secret_value() == "hunter2"


def test_file_then_overrides_win(tmp_path: Path) -> None:
    cfg = tmp_path / "adgen.yaml"
    cfg.write_text("redis:\n  env: staging\nbudget:\n  batch_size: 4\n")
    settings = load_settings(cfg, budget={"batch_size": 8})
    assert settings.redis.env == "staging"
    assert settings.budget.batch_size == 8


def test_invalid_value_is_rejected_with_field_name() -> None:
    with pytest.raises(ValidationError, match="user_groups"):
        load_settings(None, budget={"user_groups": 0})


def test_the_decode_dtype_default_follows_the_committed_bf16_measurement() -> None:
    """bf16 decodes by default (where native) only if it stayed within one standard error of fp32 on validation."""
    import json
    from pathlib import Path

    from adgen.core.config import ModelSettings

    measured = Path(__file__).resolve().parents[1] / "docs/data/amazon-full/exploration/decode_dtype.json"
    within = json.loads(measured.read_text())["within_one_standard_error"]
    assert ModelSettings().dtype == ("auto" if within else "float32")
