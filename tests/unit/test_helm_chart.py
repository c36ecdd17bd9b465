"""The Helm chart in helm/ and the image recipe, checked without Helm, Docker or a cluster.

Helm cannot be installed on this platform, so the chart is never rendered here. What these tests
do instead:
- parse Chart.yaml and values.yaml, and hold values.yaml to a pydantic model of the keys
  Crucible uses, and to the key names the Dagster chart's schema accepts;
- derive the `dagster.yaml` the Dagster chart writes from these values (the blocks Crucible
  relies on, mapped the way the chart's instance templates map them) and load it with Dagster;
- turn this chart's RBAC, ServiceAccount and ConfigMap templates into plain YAML by a documented
  substitution (`substitute` below), then validate the objects against the Kubernetes 1.30 API
  schemas with kubernetes_validate;
- check the Dockerfile's references (copied paths, entry module, user, environment).
"""

import copy
import importlib.util
import json
import re
import tomllib
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import dagster_k8s.pipes
import kubernetes
import kubernetes_validate
import pytest
import yaml
from dagster._config import process_config
from dagster_aws.s3.compute_log_manager import S3ComputeLogManager
from dagster_k8s import K8sRunLauncher
from dagster_k8s.job import UserDefinedDagsterK8sConfig
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from crucible_dagster.plan.models import CHAOS_MESH_KINDS
from crucible_dagster.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
HELM = ROOT / "helm"
TEMPLATES = HELM / "templates"
KUBERNETES_VERSION = "1.30"
RELEASE = {"Name": "crucible", "Namespace": "crucible", "Service": "Helm"}
# Where the Dagster chart mounts dagster.yaml by default (its `global.dagsterHome`).
CHART_DAGSTER_HOME = "/opt/dagster/dagster_home"

K8S_NAME = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return _load_yaml(HELM / "values.yaml")


# The keys Crucible sets, as a model. Crucible's own section refuses unknown keys; the Dagster
# section allows the chart's other keys but holds Crucible's to what Crucible needs.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)


class Image(_Strict):
    repository: str = Field(min_length=1)
    tag: str = Field(min_length=1)
    pullPolicy: Literal["Always", "IfNotPresent", "Never"]


class CpuMemory(_Strict):
    cpu: str
    memory: str


class LoadResources(_Strict):
    requests: CpuMemory
    limits: CpuMemory


class RunWorker(_Strict):
    serviceAccountName: str = Field(pattern=K8S_NAME)


class Load(_Strict):
    namespace: str = Field(pattern=r"^$|" + K8S_NAME)
    serviceAccountName: str = Field(pattern=K8S_NAME)
    resources: LoadResources


class ChaosMesh(_Strict):
    enabled: bool


class ServiceMonitor(_Strict):
    enabled: bool
    namespace: str
    selector: dict[str, str] = Field(min_length=1)
    port: str
    interval: str = Field(pattern=r"^\d+[smh]$")
    labels: dict[str, str]


class Prometheus(_Strict):
    url: str
    pushgatewayUrl: str
    remoteWriteUrl: str
    serviceMonitor: ServiceMonitor


class CrucibleSection(_Strict):
    image: Image
    k6Image: Image
    home: str = Field(pattern=r"^/")
    storageUrl: str = Field(pattern=r"^(s3|file)://")
    s3EndpointUrl: str
    awsRegion: str
    s3CredentialsSecret: str = Field(pattern=K8S_NAME)
    settingsConfigMap: str = Field(pattern=K8S_NAME)
    sutPasswordSecret: str = Field(pattern=K8S_NAME)
    runWorker: RunWorker
    load: Load
    chaosMesh: ChaosMesh
    prometheus: Prometheus


class NameRef(_Strict):
    name: str = Field(pattern=K8S_NAME)


class Telemetry(_Strict):
    enabled: Literal[False]


class Postgresql(_Open):
    enabled: Literal[False]
    postgresqlHost: str = Field(min_length=1)
    postgresqlUsername: str = Field(min_length=1)
    postgresqlDatabase: str = Field(min_length=1)


class RunMonitoring(_Strict):
    enabled: Literal[True]
    startTimeoutSeconds: int
    cancelTimeoutSeconds: int
    pollIntervalSeconds: int
    freeSlotsAfterRunEndSeconds: int = Field(gt=0)


class Daemon(_Open):
    runMonitoring: RunMonitoring


class TagLimit(_Strict):
    key: str
    value: dict[str, bool] | str | None = None
    limit: int


class ConcurrencyRuns(_Open):
    tagConcurrencyLimits: list[TagLimit]


class Concurrency(_Open):
    enabled: Literal[True]
    runs: ConcurrencyRuns


class K8sRunLauncherValues(_Open):
    jobNamespace: str
    envConfigMaps: list[NameRef]
    envSecrets: list[NameRef]
    runK8sConfig: dict[str, dict[str, Any]]


class RunLauncherConfig(_Open):
    k8sRunLauncher: K8sRunLauncherValues


class RunLauncher(_Strict):
    type: Literal["K8sRunLauncher"]
    config: RunLauncherConfig


class S3Logs(_Open):
    bucket: str = Field(min_length=1)


class ComputeLogConfig(_Open):
    s3ComputeLogManager: S3Logs


class ComputeLogManager(_Strict):
    type: Literal["S3ComputeLogManager"]
    config: ComputeLogConfig


class UserDeployment(_Open):
    name: str = Field(pattern=K8S_NAME)
    image: Image
    codeServerArgs: list[str]
    port: int
    envConfigMaps: list[NameRef]
    envSecrets: list[NameRef]


class UserDeployments(_Open):
    enabled: Literal[True]
    enableSubchart: Literal[True]
    deployments: list[UserDeployment] = Field(min_length=1, max_length=1)


class Webserver(_Open):
    envSecrets: list[NameRef]


class DagsterSection(_Open):
    telemetry: Telemetry
    postgresql: Postgresql
    generatePostgresqlPasswordSecret: Literal[False]
    dagsterWebserver: Webserver
    dagsterDaemon: Daemon
    concurrency: Concurrency
    runLauncher: RunLauncher
    computeLogManager: ComputeLogManager
    userDeployments: UserDeployments = Field(alias="dagster-user-deployments")


class GlobalSection(_Strict):
    postgresqlSecretName: str = Field(pattern=K8S_NAME)


class ChartValues(_Strict):
    global_: GlobalSection = Field(alias="global")
    crucible: CrucibleSection
    dagster: DagsterSection


def test_chart_depends_on_the_dagster_chart_of_the_pinned_dagster_release() -> None:
    chart = _load_yaml(HELM / "Chart.yaml")
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [d for d in pyproject["project"]["dependencies"] if d.startswith("dagster==")]

    assert chart["apiVersion"] == "v2"
    assert chart["name"] == "crucible"
    assert chart["appVersion"] == pyproject["project"]["version"]
    [dependency] = chart["dependencies"]
    assert dependency["name"] == "dagster"
    assert dependency["repository"] == "https://dagster-io.github.io/helm"
    assert pins == [f"dagster=={dependency['version']}"]


def test_values_match_the_model_of_the_keys_crucible_uses(values: dict[str, Any]) -> None:
    ChartValues.model_validate(values)


def test_an_unknown_key_under_crucible_is_refused(values: dict[str, Any]) -> None:
    misspelt = copy.deepcopy(values)
    misspelt["crucible"]["load"]["serviceAcountName"] = "x"

    with pytest.raises(ValidationError, match="serviceAcountName"):
        ChartValues.model_validate(misspelt)


def test_the_code_location_runs_a_code_server_not_a_grpc_server(values: dict[str, Any]) -> None:
    [deployment] = values["dagster"]["dagster-user-deployments"]["deployments"]

    # The Dagster chart prefers dagsterApiGrpcArgs when both are set, and `dagster api grpc`
    # cannot reload definitions in place.
    assert "dagsterApiGrpcArgs" not in deployment
    assert deployment["codeServerArgs"] == ["-m", "crucible_dagster.definitions"]
    assert importlib.util.find_spec("crucible_dagster.definitions") is not None
    workspace = _load_yaml(ROOT / "workspace.yaml")
    assert (
        workspace["load_from"][0]["python_module"]["module_name"] == "crucible_dagster.definitions"
    )


def test_names_repeated_between_sections_agree(values: dict[str, Any]) -> None:
    crucible, dagster = values["crucible"], values["dagster"]
    launcher = dagster["runLauncher"]["config"]["k8sRunLauncher"]
    [deployment] = dagster["dagster-user-deployments"]["deployments"]
    secrets = [{"name": crucible["s3CredentialsSecret"]}, {"name": crucible["sutPasswordSecret"]}]
    settings_map = [{"name": crucible["settingsConfigMap"]}]

    assert deployment["image"] == crucible["image"]
    assert deployment["envConfigMaps"] == settings_map
    assert deployment["envSecrets"] == secrets
    assert launcher["envConfigMaps"] == settings_map
    assert launcher["envSecrets"] == secrets
    assert dagster["dagsterWebserver"]["envSecrets"] == [{"name": crucible["s3CredentialsSecret"]}]
    pod_spec = launcher["runK8sConfig"]["podSpecConfig"]
    assert pod_spec["serviceAccountName"] == crucible["runWorker"]["serviceAccountName"]


def _keys(names: str) -> set[str]:
    return set(names.split())


# The key names the Dagster chart's values schema accepts at the places Crucible sets keys, read
# from the chart's schema sources (helm/dagster/schema in dagster-io/dagster). Limitation: they
# were read from the newest schema sources available offline, not from the 1.13.27 tag itself.
CHART_SCHEMA_KEYS: dict[str, set[str]] = {
    "": _keys(
        "dagsterWebserver dagster-user-deployments postgresql generatePostgresqlPasswordSecret "
        "generateCeleryConfigSecret rabbitmq redis flower ingress imagePullSecrets "
        "computeLogManager scheduler runLauncher pythonLogs dagsterDaemon busybox migrate "
        "telemetry serviceAccount global retention concurrency additionalInstanceConfig"
    ),
    "telemetry": _keys("enabled"),
    "postgresql": _keys(
        "image enabled postgresqlHost postgresqlUsername postgresqlPassword postgresqlDatabase "
        "postgresqlParams postgresqlScheme service"
    ),
    "postgresql.service": _keys("port"),
    "dagsterWebserver": _keys(
        "replicaCount image nameOverride pathPrefix service workspace env envConfigMaps "
        "envSecrets deploymentLabels labels nodeSelector affinity tolerations podSecurityContext "
        "securityContext resources readinessProbe livenessProbe startupProbe annotations "
        "enableReadOnly dbStatementTimeout dbPoolRecycle logLevel schedulerName volumeMounts "
        "volumes"
    ),
    "dagsterDaemon": _keys(
        "enabled image runCoordinator heartbeatTolerance env envConfigMaps envSecrets "
        "deploymentLabels labels nodeSelector affinity tolerations podSecurityContext "
        "securityContext resources livenessProbe readinessProbe startupProbe annotations "
        "runMonitoring runRetries sensors schedules schedulerName volumeMounts volumes"
    ),
    # runMonitoring is a free-form mapping in the schema; these are the keys the chart's
    # instance template reads from it.
    "dagsterDaemon.runMonitoring": _keys(
        "enabled startTimeoutSeconds cancelTimeoutSeconds maxResumeRunAttempts "
        "pollIntervalSeconds freeSlotsAfterRunEndSeconds"
    ),
    "concurrency": _keys("enabled pools runs"),
    "concurrency.runs": _keys("maxConcurrentRuns tagConcurrencyLimits"),
    "runLauncher": _keys("type config"),
    "runLauncher.config": _keys("celeryK8sRunLauncher k8sRunLauncher customRunLauncher"),
    "runLauncher.config.k8sRunLauncher": _keys(
        "image imagePullPolicy jobNamespace loadInclusterConfig kubeconfigFile envConfigMaps "
        "envSecrets envVars volumeMounts volumes labels failPodOnRunFailure resources "
        "schedulerName securityContext runK8sConfig"
    ),
    "runLauncher.config.k8sRunLauncher.runK8sConfig": _keys(
        "containerConfig podSpecConfig podTemplateSpecMetadata jobSpecConfig jobMetadata"
    ),
    "computeLogManager": _keys("type config"),
    "computeLogManager.config": _keys(
        "azureBlobComputeLogManager gcsComputeLogManager s3ComputeLogManager "
        "customComputeLogManager"
    ),
    "computeLogManager.config.s3ComputeLogManager": _keys(
        "bucket localDir prefix useSsl verify verifyCertPath endpointUrl skipEmptyFiles "
        "uploadInterval uploadExtraArgs showUrlOnly region"
    ),
    "dagster-user-deployments": _keys("enabled enableSubchart imagePullSecrets deployments"),
    "dagster-user-deployments.deployments[]": _keys(
        "name image port dagsterApiGrpcArgs codeServerArgs includeConfigInLaunchedRuns env "
        "envConfigMaps envSecrets annotations nodeSelector affinity tolerations "
        "podSecurityContext securityContext resources livenessProbe readinessProbe startupProbe "
        "labels volumeMounts volumes schedulerName"
    ),
    "dagster-user-deployments.deployments[].image": _keys("repository tag pullPolicy"),
}
GLOBAL_SCHEMA_KEYS = _keys(
    "postgresqlSecretName dagsterHome serviceAccountName "
    "celeryConfigSecretName dagsterInstanceConfigMap"
)


def _at(tree: dict[str, Any], path: str) -> list[dict[str, Any]]:
    nodes: list[Any] = [tree]
    for part in [p for p in path.split(".") if p]:
        key = part.removesuffix("[]")
        nodes = [n[key] for n in nodes if key in n]
        if part.endswith("[]"):
            nodes = [item for n in nodes for item in n]
    return nodes


def test_every_dagster_key_crucible_sets_exists_in_the_dagster_charts_schema(
    values: dict[str, Any],
) -> None:
    unknown = [
        f"dagster.{path}.{key}".replace("..", ".")
        for path, allowed in CHART_SCHEMA_KEYS.items()
        for node in _at(values["dagster"], path)
        for key in node
        if key not in allowed
    ]

    assert unknown == []
    assert set(values["global"]) <= GLOBAL_SCHEMA_KEYS


# The dagster.yaml the Dagster chart writes from these values, for the blocks Crucible relies
# on. Each mapping follows the chart's instance templates (configmap-instance.yaml and
# helpers/instance/*.tpl): camelCase values become the snake_case keys Dagster reads.


def implied_dagster_yaml(values: dict[str, Any], release_namespace: str) -> dict[str, Any]:
    dagster = values["dagster"]
    monitoring = dagster["dagsterDaemon"]["runMonitoring"]
    limits = dagster["concurrency"]["runs"]["tagConcurrencyLimits"]
    return {
        "run_coordinator": {
            "module": "dagster.core.run_coordinator",
            "class": "QueuedRunCoordinator",
        },
        "concurrency": {
            "runs": {
                "tag_concurrency_limits": [
                    {k: limit[k] for k in ("key", "value", "limit") if k in limit}
                    for limit in limits
                ]
            }
        },
        "run_monitoring": {
            "enabled": monitoring["enabled"],
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "cancel_timeout_seconds": monitoring["cancelTimeoutSeconds"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"],
        },
        "telemetry": {"enabled": dagster["telemetry"]["enabled"]},
        "run_launcher": {
            "module": "dagster_k8s",
            "class": "K8sRunLauncher",
            "config": _k8s_run_launcher_config(values, release_namespace),
        },
        "compute_logs": {
            "module": "dagster_aws.s3.compute_log_manager",
            "class": "S3ComputeLogManager",
            "config": _s3_compute_log_config(dagster),
        },
    }


def _k8s_run_launcher_config(values: dict[str, Any], release_namespace: str) -> dict[str, Any]:
    launcher = values["dagster"]["runLauncher"]["config"]["k8sRunLauncher"]
    run_k8s = launcher["runK8sConfig"]
    snake = {
        "containerConfig": "container_config",
        "podSpecConfig": "pod_spec_config",
        "podTemplateSpecMetadata": "pod_template_spec_metadata",
        "jobSpecConfig": "job_spec_config",
        "jobMetadata": "job_metadata",
    }
    return {
        "job_namespace": launcher["jobNamespace"] or release_namespace,
        "postgres_password_secret": values["global"]["postgresqlSecretName"],
        # Set by the chart from keys Crucible leaves alone; these stand for what it renders.
        "load_incluster_config": True,
        "image_pull_policy": "Always",
        "service_account_name": "dagster",
        "dagster_home": CHART_DAGSTER_HOME,
        "instance_config_map": "crucible-dagster-instance",
        "env_config_maps": [ref["name"] for ref in launcher["envConfigMaps"]],
        "env_secrets": [ref["name"] for ref in launcher["envSecrets"]],
        "run_k8s_config": {snake[key]: value for key, value in run_k8s.items()},
    }


def _s3_compute_log_config(dagster: dict[str, Any]) -> dict[str, Any]:
    s3 = dagster["computeLogManager"]["config"]["s3ComputeLogManager"]
    snake = {"bucket": "bucket", "prefix": "prefix", "region": "region", "localDir": "local_dir"}
    config = {snake[key]: value for key, value in s3.items() if value}
    config["verify"] = s3.get("verify") is not False
    return config


def test_dagster_accepts_the_queue_monitoring_and_telemetry_the_chart_implies(
    values: dict[str, Any],
) -> None:
    implied = implied_dagster_yaml(values, RELEASE["Namespace"])
    overrides = {
        k: implied[k] for k in ("run_coordinator", "concurrency", "run_monitoring", "telemetry")
    }

    with dg.instance_for_test(overrides=overrides) as instance:
        queue = instance.get_concurrency_config().run_queue_config
        monitoring = instance.run_monitoring_settings
        telemetry_enabled = instance.telemetry_enabled

    assert queue is not None
    assert queue.tag_concurrency_limits == [
        {"key": "crucible/sut", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}
    ]
    assert monitoring["enabled"] is True
    assert monitoring["free_slots_after_run_end_seconds"] > 0
    assert telemetry_enabled is False


def test_a_misspelt_run_monitoring_key_is_refused_by_dagster(values: dict[str, Any]) -> None:
    implied = implied_dagster_yaml(values, RELEASE["Namespace"])
    monitoring = dict(implied["run_monitoring"])
    monitoring["free_slot_after_run_end_seconds"] = monitoring.pop(
        "free_slots_after_run_end_seconds"
    )

    with (
        pytest.raises(dg.DagsterInvalidConfigError),
        dg.instance_for_test(overrides={"run_monitoring": monitoring}),
    ):
        pass


def test_k8s_run_launcher_accepts_the_config_the_chart_implies(values: dict[str, Any]) -> None:
    config = implied_dagster_yaml(values, RELEASE["Namespace"])["run_launcher"]

    result = process_config(K8sRunLauncher.config_type(), config["config"])
    run_k8s = UserDefinedDagsterK8sConfig(**config["config"]["run_k8s_config"])

    assert result.success, result.errors
    assert (
        run_k8s.pod_spec_config["service_account_name"]
        == (values["crucible"]["runWorker"]["serviceAccountName"])
    )
    assert run_k8s.container_config["resources"]["requests"]["memory"] == "1Gi"


def test_s3_compute_log_manager_accepts_the_config_the_chart_implies(
    values: dict[str, Any],
) -> None:
    config = implied_dagster_yaml(values, RELEASE["Namespace"])["compute_logs"]

    result = process_config(S3ComputeLogManager.config_type(), config["config"])

    assert result.success, result.errors


def test_the_image_can_load_the_postgresql_storage_the_chart_configures() -> None:
    assert importlib.util.find_spec("dagster_postgres") is not None


# Templates as plain YAML. The substitution, and all it does:
# - a line that is only `{{- if .Values.<path> }}` opens a block kept when that value is truthy;
#   a line that is only `{{- end }}` closes it;
# - `{{ .Values.<path> }}` becomes that value, `{{ .Release.<Name|Namespace|Service> }}` the
#   release's, and `{{ include "<helper>" . }}` the value HELPERS gives for that helper (what the
#   one-line helper in _helpers.tpl yields);
# - a trailing `| quote` quotes the result.
# Any other expression fails the test. It is not a template engine: templates that need more
# (servicemonitor.yaml with `toYaml`, NOTES.txt) are not checked this way.
PLAIN_TEMPLATES = ["serviceaccount.yaml", "role.yaml", "rolebinding.yaml", "configmap.yaml"]
_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}")
_IF = re.compile(r"^\{\{-?\s*if\s+\.Values\.([\w.]+)\s*-?\}\}$")
_END = re.compile(r"^\{\{-?\s*end\s*-?\}\}$")


def _value_at(tree: dict[str, Any], dotted: str) -> Any:
    node: Any = tree
    for part in dotted.split("."):
        node = node[part]
    return node


def helpers(values: dict[str, Any]) -> dict[str, str]:
    chart = _load_yaml(HELM / "Chart.yaml")
    crucible = values["crucible"]
    return {
        "crucible.chart": f"{chart['name']}-{chart['version']}",
        "crucible.loadNamespace": crucible["load"]["namespace"] or RELEASE["Namespace"],
        "crucible.image": f"{crucible['image']['repository']}:{crucible['image']['tag']}",
        "crucible.k6Image": f"{crucible['k6Image']['repository']}:{crucible['k6Image']['tag']}",
        "crucible.serviceMonitorNamespace": (
            crucible["prometheus"]["serviceMonitor"]["namespace"] or RELEASE["Namespace"]
        ),
    }


def _evaluate(expression: str, values: dict[str, Any]) -> str:
    body, _, pipe = (part.strip() for part in expression.partition("|"))
    if pipe not in ("", "quote"):
        raise AssertionError(f"the substitution does not handle {expression!r}")
    if body.startswith(".Values."):
        result = _value_at(values, body.removeprefix(".Values."))
    elif body.startswith(".Release."):
        result = RELEASE[body.removeprefix(".Release.")]
    elif match := re.fullmatch(r'include\s+"([\w.]+)"\s+\.', body):
        result = helpers(values)[match[1]]
    else:
        raise AssertionError(f"the substitution does not handle {expression!r}")
    return json.dumps(str(result)) if pipe == "quote" else str(result)


def substitute(template: str, values: dict[str, Any]) -> str:
    """The template as plain YAML, by the substitution described above."""
    lines, kept = [], [True]
    for line in template.splitlines():
        if match := _IF.match(line.strip()):
            kept.append(kept[-1] and bool(_value_at(values, match[1])))
        elif _END.match(line.strip()):
            kept.pop()
        elif kept[-1]:
            lines.append(_ACTION.sub(lambda m: _evaluate(m[1], values), line))
    assert kept == [True], "unbalanced if/end"
    return "\n".join(lines) + "\n"


def rendered_objects(values: dict[str, Any]) -> list[dict[str, Any]]:
    objects = []
    for name in PLAIN_TEMPLATES:
        text = substitute((TEMPLATES / name).read_text(), values)
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return objects


def _with(values: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(values)
    for dotted, value in changes.items():
        *parents, last = dotted.split(".")
        node = changed
        for part in parents:
            node = node[part]
        node[last] = value
    return changed


EVERYTHING_SET = {
    "crucible.load.namespace": "crucible-load",
    "crucible.s3EndpointUrl": "http://seaweedfs.storage:8333",
    "crucible.prometheus.url": "http://prometheus.monitoring:9090",
    "crucible.prometheus.pushgatewayUrl": "http://prometheus-pushgateway.monitoring:9091",
    "crucible.prometheus.remoteWriteUrl": "http://prometheus.monitoring:9090/api/v1/write",
}


@pytest.mark.parametrize("changes", [{}, EVERYTHING_SET], ids=["defaults", "everything-set"])
def test_rbac_and_settings_templates_are_valid_kubernetes_objects(
    values: dict[str, Any], changes: dict[str, Any]
) -> None:
    objects = rendered_objects(_with(values, changes))

    kinds = sorted(obj["kind"] for obj in objects)
    assert kinds == ["ConfigMap", "Role", "RoleBinding", "ServiceAccount", "ServiceAccount"]
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def test_the_role_in_the_load_namespace_is_bound_to_the_run_workers(
    values: dict[str, Any],
) -> None:
    by_kind = {}
    for obj in rendered_objects(_with(values, EVERYTHING_SET)):
        by_kind.setdefault(obj["kind"], []).append(obj)
    [role], [binding] = by_kind["Role"], by_kind["RoleBinding"]
    accounts = {sa["metadata"]["name"]: sa for sa in by_kind["ServiceAccount"]}
    run_worker = values["crucible"]["runWorker"]["serviceAccountName"]
    load = values["crucible"]["load"]["serviceAccountName"]

    assert role["metadata"]["namespace"] == "crucible-load"
    assert binding["metadata"]["namespace"] == "crucible-load"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": run_worker, "namespace": RELEASE["Namespace"]}
    ]
    assert accounts[run_worker]["metadata"]["namespace"] == RELEASE["Namespace"]
    assert accounts[load]["metadata"]["namespace"] == "crucible-load"
    assert accounts[load]["automountServiceAccountToken"] is False


# What the Role's consumers call: PipesK8sClient runs load pods, the start barrier annotates and
# reads them, and the Chaos Mesh backend creates experiments of the kinds plans may name. The
# Kubernetes client methods map to (resource, verb) as the Kubernetes API defines them.
CLIENT_CALLS = {
    "create_namespaced_pod": ("pods", "create"),
    "read_namespaced_pod": ("pods", "get"),
    "list_namespaced_pod": ("pods", "list"),
    "delete_namespaced_pod": ("pods", "delete"),
    "patch_namespaced_pod": ("pods", "patch"),
    "read_namespaced_pod_log": ("pods/log", "get"),
}
CHAOS_VERBS = {"create", "get", "list", "watch", "delete", "patch"}


def _grants(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def _role(values: dict[str, Any]) -> dict[str, Any]:
    [role] = [obj for obj in rendered_objects(values) if obj["kind"] == "Role"]
    return role


def test_the_role_grants_exactly_what_pipes_the_barrier_and_chaos_mesh_use(
    values: dict[str, Any],
) -> None:
    pipes_calls = set(
        re.findall(r"core_api\.(\w+)\(", Path(dagster_k8s.pipes.__file__).read_text())
    )
    # `watch` lets the pod launcher wait for readiness by watching instead of polling.
    needed = {("", *CLIENT_CALLS[call]) for call in CLIENT_CALLS} | {("", "pods", "watch")}
    chaos_resources = {kind.lower() for kind in CHAOS_MESH_KINDS.values()}
    needed |= {("chaos-mesh.org", r, v) for r in chaos_resources for v in CHAOS_VERBS}

    assert pipes_calls <= set(CLIENT_CALLS), "PipesK8sClient calls an API the Role may not grant"
    for call in CLIENT_CALLS:
        assert hasattr(kubernetes.client.CoreV1Api, call)
    assert _grants(_role(values)) == needed


def test_without_chaos_mesh_the_role_grants_only_pods(values: dict[str, Any]) -> None:
    grants = _grants(_role(_with(values, {"crucible.chaosMesh.enabled": False})))

    assert {group for group, _, _ in grants} == {""}


def _configmap(values: dict[str, Any]) -> dict[str, str]:
    [configmap] = [obj for obj in rendered_objects(values) if obj["kind"] == "ConfigMap"]
    assert configmap["metadata"]["name"] == values["crucible"]["settingsConfigMap"]
    return configmap["data"]


def test_the_settings_configmap_feeds_crucibles_settings(
    values: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _configmap(_with(values, EVERYTHING_SET))

    settings_keys = {k for k in data if k.startswith("CRUCIBLE_") and "K8S_" not in k}
    settings_keys -= {"CRUCIBLE_PROMETHEUS_URL"}  # for people and dashboards, not for the code
    fields = {f"CRUCIBLE_{name.upper()}" for name in Settings.model_fields}
    assert settings_keys <= fields
    env = {k: v for k, v in data.items() if k in fields or k == "AWS_REGION"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()

    assert settings.storage_url == values["crucible"]["storageUrl"]
    assert settings.s3_endpoint_url == EVERYTHING_SET["crucible.s3EndpointUrl"]
    assert settings.pushgateway_url == EVERYTHING_SET["crucible.prometheus.pushgatewayUrl"]
    assert (
        settings.prometheus_remote_write_url
        == (EVERYTHING_SET["crucible.prometheus.remoteWriteUrl"])
    )
    assert str(settings.home) == values["crucible"]["home"]
    assert data["CRUCIBLE_K8S_NAMESPACE"] == "crucible-load"
    assert data["CRUCIBLE_K8S_PASSWORD_SECRET"] == values["crucible"]["sutPasswordSecret"]


def test_unset_optional_urls_are_left_out_of_the_settings(values: dict[str, Any]) -> None:
    data = _configmap(values)

    # An empty CRUCIBLE_S3_ENDPOINT_URL would reach boto3 as an empty endpoint.
    assert "CRUCIBLE_S3_ENDPOINT_URL" not in data
    assert "CRUCIBLE_PUSHGATEWAY_URL" not in data
    assert data["CRUCIBLE_K8S_NAMESPACE"] == RELEASE["Namespace"]
    # Names of Secrets only, never their contents.
    assert not [key for key in data if key.endswith(("_PASSWORD", "_SECRET_ACCESS_KEY"))]


def test_templates_use_only_defined_helpers_and_existing_values(values: dict[str, Any]) -> None:
    defined = set(re.findall(r'define\s+"([\w.]+)"', (TEMPLATES / "_helpers.tpl").read_text()))
    used_helpers: set[str] = set()
    missing_values = []
    for path in TEMPLATES.iterdir():
        text = path.read_text()
        used_helpers |= set(re.findall(r'include\s+"([\w.]+)"', text))
        for dotted in re.findall(r"\.Values\.([\w.]+)", text):
            try:
                _value_at(values, dotted)
            except KeyError:
                missing_values.append(f"{path.name}: .Values.{dotted}")

    assert used_helpers <= defined
    assert set(helpers(values)) == defined
    assert missing_values == []


# The Dockerfile. Docker cannot run here, so the image is never built; this checks what the
# recipe refers to.


def _dockerfile() -> list[str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def _ignored(path: str) -> bool:
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    return any(Path(path.rstrip("/")).match(p) or path.startswith(p + "/") for p in patterns)


def test_the_dockerfile_copies_files_that_exist_and_are_not_ignored() -> None:
    copies = [line.split()[1:-1] for line in _dockerfile() if line.startswith("COPY ")]
    sources = [source for sources in copies for source in sources]

    assert "crucible_dagster/" in sources
    assert "k6_driver/" in sources
    for source in sources:
        assert (ROOT / source).exists(), source
        assert not _ignored(source), source


def test_the_image_is_slim_python_with_locked_dependencies_and_a_non_root_user(
    values: dict[str, Any],
) -> None:
    lines = _dockerfile()
    env = " ".join(line for line in lines if line.startswith("ENV "))
    [user] = [line.split()[1] for line in lines if line.startswith("USER ")]
    [cmd] = [json.loads(line.removeprefix("CMD ")) for line in lines if line.startswith("CMD ")]

    assert lines[0] == "FROM python:3.11-slim"
    assert "RUN uv sync --frozen --no-dev" in lines
    assert user not in ("root", "0")
    assert f"DAGSTER_HOME={CHART_DAGSTER_HOME}" in env
    assert f"CRUCIBLE_HOME={values['crucible']['home']}" in env
    assert "DAGSTER_DISABLE_TELEMETRY=true" in env
    assert not re.search(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY", env)
    assert not any(line.startswith("ARG ") for line in lines)
    module = cmd[cmd.index("-m") + 1]
    assert cmd[:3] == ["dagster", "code-server", "start"]
    assert module == "crucible_dagster.definitions"
    assert str(values["dagster"]["dagster-user-deployments"]["deployments"][0]["port"]) in cmd


def test_the_image_entry_module_imports_and_holds_definitions() -> None:
    module = importlib.import_module("crucible_dagster.definitions")

    assert callable(module.defs)
