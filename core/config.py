"""One settings object for the whole system (env `ADGEN_*`, optional `.env`/file), printed on start-up.

Nested sections map to env vars with a double underscore, e.g. `ADGEN_KAFKA__BOOTSTRAP_SERVERS`,
`ADGEN_REDIS__PASSWORD`, `ADGEN_BUDGET__GENERATIONS_PER_SECOND`.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class ClientOverrides(BaseModel):
    """Client options a particular broker needs on top of the stock ones; empty for a real Kafka.

    Whoever provides the broker fills them: the embedded runtime puts its Tansu quirks here
    (adgen/runtime/tansu_quirks.py) in the settings it hands out, in process and as
    `ADGEN_KAFKA__CLIENT_OVERRIDES` (JSON) for child processes, so no client knows which broker it talks to.
    """

    producer: dict[str, Any] = Field(default_factory=dict, description="confluent-kafka producer config.")
    consumer: dict[str, Any] = Field(default_factory=dict, description="confluent-kafka consumer config.")
    faust: dict[str, Any] = Field(default_factory=dict, description="faust.App keyword settings.")


class KafkaSettings(BaseModel):
    """Broker connection; SASL/SSL fields are passed to both confluent-kafka and Faust/aiokafka."""

    bootstrap_servers: str = "127.0.0.1:9092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    client_overrides: ClientOverrides = Field(
        default_factory=lambda: ClientOverrides(),
        description="Options one particular broker needs on top of the stock client settings (see ClientOverrides).",
    )
    topic_prefix: str = ""
    default_partitions: int = Field(4, ge=1)
    replication_factor: int = Field(1, ge=1)
    session_timeout_ms: int = Field(6000, ge=1000)
    max_message_bytes: int = Field(64 * 1024, ge=1024, description="Larger events go to the dead-letter topic.")

    def confluent_config(self) -> dict[str, Any]:
        """Client config for confluent-kafka (librdkafka names)."""
        conf: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "security.protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            conf["sasl.mechanism"] = self.sasl_mechanism
            conf["sasl.username"] = self.sasl_username or ""
            conf["sasl.password"] = self.sasl_password.get_secret_value() if self.sasl_password else ""
        if self.ssl_cafile:
            conf["ssl.ca.location"] = str(self.ssl_cafile)
        if self.ssl_certfile:
            conf["ssl.certificate.location"] = str(self.ssl_certfile)
        if self.ssl_keyfile:
            conf["ssl.key.location"] = str(self.ssl_keyfile)
        return conf

    def producer_config(self, **conf: Any) -> dict[str, Any]:
        """confluent-kafka producer config: the connection, `conf` (acks, batching), the broker's overrides."""
        return {**self.confluent_config(), **conf, **self.client_overrides.producer}

    def consumer_config(self, **conf: Any) -> dict[str, Any]:
        """confluent-kafka consumer config: the connection, `conf` (group id, offsets), the broker's overrides."""
        return {**self.confluent_config(), **conf, **self.client_overrides.consumer}


class RedisSettings(BaseModel):
    """Feature-store connection: one node (`redis://`, `rediss://` for TLS) or a Redis Cluster
    (`redis+cluster://host:port[,host:port...]`, `rediss+cluster://` for TLS)."""

    url: str = Field("redis://127.0.0.1:6379/0", description="redis[s]://host:port/db or redis[s]+cluster://nodes.")
    password: SecretStr | None = None
    ssl_ca_certs: Path | None = None
    namespace: str = Field("adgen", description="First key segment: adgen:{env}:...")
    env: str = "dev"
    ttl_seconds: int = Field(7 * 24 * 3600, ge=60)
    max_retries: int = Field(
        8,
        ge=0,
        description="Retries after its first attempt a reader (e.g. `adgen features get`) makes before it "
        "gives up; the worker retries without limit.",
    )
    retry_backoff_s: float = Field(0.2, gt=0)


class PathSettings(BaseModel):
    """Where data, indexes, models, runs and worker state live (relative paths: from the working directory)."""

    world: Path = Path("var/world")
    index: Path = Path("var/index")
    models: Path = Path("var/models")
    runs: Path = Path("var/runs")
    embedding_cache: Path = Path("var/cache/embeddings")
    state: Path = Path("var/state")


class ModelSettings(BaseModel):
    """Generative model and decoding."""

    checkpoint: Path | None = Field(None, description="Local dir with safetensors + config (built-in or HF).")
    registry: Path | None = Field(
        None,
        description="Model registry dir (model/registry.py): the worker serves its current version, ignores "
        "`checkpoint`, and swaps in newly published versions (checked against the live index) while it runs.",
    )
    ci_registry: Path | None = Field(
        None,
        description="CI model registry dir (the same layout, `adgen model publish --kind ci`): the worker's search "
        "path serves its current version instead of the CI build's own model, and swaps in newly published "
        "versions (checked against the live CI set) while it runs.",
    )
    reload_interval_s: float = Field(
        30.0, gt=0, description="How often a worker checks the registry's pointer (and the CI registry's)."
    )
    encoder: str = Field("all-MiniLM-L6-v2", description="Package default or a local sentence-transformers path.")
    backend: Literal["torch", "tensorrt_llm"] = "torch"
    device: str = "cpu"
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="'auto' = bf16 only on a GPU or a CPU with AVX512-BF16/AMX (model/lm.py resolve_dtype), fp32 "
        "elsewhere: on the full Amazon protocol bf16 decoding stayed within one standard error of fp32's validation "
        "NDCG@10 (docs/data/amazon-full/exploration/decode_dtype.json); 'float32' for bit-exact fp32 lists.",
    )
    beams: int | None = Field(
        None,
        ge=1,
        description="LEADRE's beam width. Unset: the width the checkpoint's recipe was evaluated with (eval.beams), "
        "so the worker serves the lists that were measured; 20 for a checkpoint without one. Never below top_k.",
    )
    top_k: int = Field(20, ge=1)
    max_prompt_tokens: int = Field(256, ge=16)
    prefix_cache_mb: int = Field(
        256, ge=0, description="Bound on the decoder's prompt-prefix K/V cache (LRU); 0 turns it off."
    )
    seed: int = 0


class BudgetSettings(BaseModel):
    """Nearline generation budget (LEADRE: priority users by ARPU group within a compute budget)."""

    user_groups: int = Field(25, ge=1)
    generations_per_second: float = Field(20.0, gt=0)
    burst: int = Field(64, ge=1)
    min_regen_interval_s: float = Field(300.0, ge=0)
    batch_size: int = Field(16, ge=1)
    batch_deadline_ms: int = Field(50, ge=1)
    queue_capacity: int = Field(1024, ge=1)
    shared: bool = Field(
        False,
        description="One budget and one priority order for every worker, kept in Redis (processors/shared_budget.py); "
        "generations_per_second and burst are then the whole cluster's.",
    )
    arpu_edges: list[float] | None = Field(
        None,
        description="Fixed ascending ARPU group edges (len = user_groups - 1). None: fitted from observed ARPUs, "
        "or log-spaced fixed edges when the budget is shared (every worker must number groups alike).",
    )
    demand_ttl_s: float = Field(3.0, gt=0, description="Shared budget: a worker's queue report expires after this.")

    @model_validator(mode="after")
    def _edges_fit_groups(self) -> BudgetSettings:
        edges = self.arpu_edges
        if edges is not None and (len(edges) != self.user_groups - 1 or edges != sorted(edges)):
            raise ValueError(
                f"budget.arpu_edges must be {self.user_groups - 1} ascending values (user_groups - 1), got {edges}"
            )
        return self


class WindowSettings(BaseModel):
    """Per-user rolling behaviour window."""

    days: int = Field(90, ge=1)
    max_events: int = Field(50, ge=1)


class WorkerSettings(BaseModel):
    """Faust worker process."""

    app_id: str = "adgen"
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    metrics_port: int = 9464
    snapshot_interval_s: float = 3600.0
    log_level: str = "WARNING"


class Settings(BaseSettings):
    """Effective configuration; see `adgen config`."""

    model_config = SettingsConfigDict(env_prefix="ADGEN_", env_nested_delimiter="__", env_file=".env", extra="ignore")

    kafka: KafkaSettings = KafkaSettings()
    redis: RedisSettings = RedisSettings()
    paths: PathSettings = PathSettings()
    model: ModelSettings = ModelSettings()
    budget: BudgetSettings = BudgetSettings()
    window: WindowSettings = WindowSettings()
    worker: WorkerSettings = WorkerSettings()

    def masked(self) -> dict[str, Any]:
        """Values as JSON-safe dict with secrets shown as '**********' (never log secrets)."""
        return json.loads(self.model_dump_json())


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from env, then an optional JSON/YAML file, then explicit overrides (last wins)."""
    data: dict[str, Any] = {}
    if config_file is not None:
        text = Path(config_file).read_text()
        if config_file.suffix in {".yaml", ".yml"}:
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    base = Settings()
    merged = _deep_merge(base.model_dump(), data)
    merged = _deep_merge(merged, overrides)
    return Settings.model_validate(merged)


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings from the environment (cached)."""
    return Settings()
