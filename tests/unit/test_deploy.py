"""deploy/ without a cluster: every overlay renders, validates, and agrees with the image and CLI.

Kubernetes' own kinds are validated against its schemas offline (kubernetes-validate); the
custom resources (PodMonitor, ServiceMonitor, KServe's) are checked by hand against what they
must select or name. That the autoscaler's and dashboard's Triton metrics exist in a real scrape
is checked in tests/integration/test_metrics.py.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess

import pytest

from pytorch_backend import metrics
from pytorch_backend.serving.cli import build_parser
from pytorch_backend.serving.server import (
    TritonServer,
    server_environment,
)
from tests import deploy_utils, prerequisites
from tests.deploy_utils import OVERLAYS, ROOT, render

KUBERNETES_VERSION = "1.30.0"
CRD_GROUPS = ("monitoring.coreos.com/", "serving.kserve.io/")


@pytest.fixture(autouse=True, scope="module")
def needs_kubectl() -> None:
    """Every test here renders the overlays with ``kubectl kustomize`` (offline)."""
    if deploy_utils.kubectl() is None:
        prerequisites.missing(
            "kubectl", "`kubectl kustomize` renders the overlays (Debian: kubernetes-client)"
        )


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def one(objects: list[dict], kind: str) -> dict:
    (found,) = by_kind(objects, kind)
    return found


def container(deployment: dict) -> dict:
    (found,) = [c for c in deployment["spec"]["template"]["spec"]["containers"]]
    return found


def flags(args: list[str]) -> dict[str, str]:
    return dict(arg.split("=", 1) for arg in args)


def serve_ports() -> dict[str, int]:
    """The ports `pytorch-backend serve` uses by default."""
    args = build_parser().parse_args(["serve", "repo"])
    return {"http": args.http_port, "grpc": args.grpc_port, "metrics": args.metrics_port}


def dockerfile() -> tuple[list[int], list[str]]:
    """The Dockerfile's EXPOSEd ports and CMD."""
    text = (ROOT / "Dockerfile").read_text()
    expose = [int(p) for line in re.findall(r"^EXPOSE (.*)$", text, re.M) for p in line.split()]
    (cmd,) = re.findall(r"^CMD (\[.*\])$", text, re.M)
    return expose, json.loads(cmd)


def test_every_overlay_renders_the_objects_it_promises(rendered):
    kinds = {overlay: sorted({o["kind"] for o in objs}) for overlay, objs in rendered.items()}
    assert kinds == {
        "cpu": ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "Service", "ServiceMonitor"],
        "gpu": [
            "Deployment",
            "HorizontalPodAutoscaler",
            "PersistentVolumeClaim",
            "PodMonitor",
            "Service",
        ],
        "kserve": ["ClusterServingRuntime", "InferenceService"],
    }


def test_kubernetes_objects_validate_against_the_schemas(rendered):
    import kubernetes_validate

    checked = 0
    for objects in rendered.values():
        for obj in objects:
            if obj["apiVersion"].startswith(CRD_GROUPS):
                continue
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            checked += 1
    assert checked == 4 + 4  # cpu and gpu: every object but the monitor


def test_a_schema_violation_is_caught(rendered):
    import kubernetes_validate

    deployment = copy.deepcopy(one(rendered["gpu"], "Deployment"))
    container(deployment)["ports"][0]["containerPort"] = "http"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_ports_args_and_probes_agree_with_serve_and_the_dockerfile(rendered, overlay):
    objects = rendered[overlay]
    deployment, service = one(objects, "Deployment"), one(objects, "Service")
    main = container(deployment)
    ports = {p["name"]: p["containerPort"] for p in main["ports"]}
    expose, cmd = dockerfile()
    assert ports == serve_ports()
    assert sorted(expose) == sorted(ports.values())
    assert main["command"] == cmd[:1]
    given = flags(main["args"])
    assert {k: v for k, v in given.items() if k in flags(cmd[1:])} == flags(cmd[1:])
    assert {given[f"--{name}-port"] for name in ports} == {str(p) for p in ports.values()}
    assert {p["name"]: p["targetPort"] for p in service["spec"]["ports"]} == {
        name: name for name in ports
    }
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    assert given["--model-repository"] in mounts
    probes = {k: main[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {k: (p["path"], p["port"]) for k, p in probes.items()} == {
        "startupProbe": ("/v2/health/live", "http"),
        "livenessProbe": ("/v2/health/live", "http"),
        "readinessProbe": ("/v2/health/ready", "http"),
    }
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # model loads


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_shared_memory_and_resources(rendered, overlay):
    spec = one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]
    main = container({"spec": {"template": {"spec": spec}}})
    volumes = {v["name"]: v for v in spec["volumes"]}
    (shm,) = [m["name"] for m in main["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert volumes[shm]["emptyDir"]["medium"] == "Memory"
    assert volumes[shm]["emptyDir"]["sizeLimit"]
    resources = main["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    if overlay == "gpu":
        assert resources["limits"]["nvidia.com/gpu"] == 1
    else:
        assert "nvidia.com/gpu" not in resources["limits"]
        (init,) = spec["initContainers"]
        assert {m["name"] for m in init["volumeMounts"]} == {volumes["models"]["name"]}
        assert "emptyDir" in volumes["models"]


def test_deployment_and_runtime_arguments_are_tritonserver_options(rendered):
    server = prerequisites.tritonserver()  # for its --help
    result = subprocess.run(
        [str(server), "--help"],
        env=server_environment(server),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    known = set(re.findall(r"--[a-z][a-z-]+", result.stdout + result.stderr))
    assert "--model-repository" in known
    runtime = one(rendered["kserve"], "ClusterServingRuntime")
    arguments = [
        *container(one(rendered["gpu"], "Deployment"))["args"],
        *container(one(rendered["cpu"], "Deployment"))["args"],
        *runtime["spec"]["containers"][0]["args"],
        *TritonServer(ROOT).extra_args,
    ]
    assert {a.split("=", 1)[0] for a in arguments} <= known


@pytest.mark.parametrize("overlay", ["cpu", "gpu"])
def test_the_autoscaler_scales_the_deployment_on_the_adapters_metric(rendered, overlay):
    objects = rendered[overlay]
    hpa, deployment = one(objects, "HorizontalPodAutoscaler"), one(objects, "Deployment")
    assert hpa["apiVersion"] == "autoscaling/v2"
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    (metric,) = hpa["spec"]["metrics"]
    names = {rule["name"]["as"] for rule in deploy_utils.adapter_rules()}
    assert metric["type"] == "Pods" and metric["pods"]["metric"]["name"] in names
    assert deploy_utils.hpa_source_metrics() == {
        "nv_inference_queue_duration_us",
        "nv_inference_request_success",
    }


@pytest.mark.parametrize(("overlay", "kind"), [("cpu", "ServiceMonitor"), ("gpu", "PodMonitor")])
def test_the_monitor_selects_the_pods_metrics_port(rendered, overlay, kind):
    objects = rendered[overlay]
    monitor = one(objects, kind)
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    selected = monitor["spec"]["selector"]["matchLabels"]
    if kind == "PodMonitor":
        labels = one(objects, "Deployment")["spec"]["template"]["metadata"]["labels"]
        (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
        port_names = {p["name"] for p in container(one(objects, "Deployment"))["ports"]}
    else:
        labels = one(objects, "Service")["metadata"]["labels"]
        (endpoint,) = monitor["spec"]["endpoints"]
        port_names = {p["name"] for p in one(objects, "Service")["spec"]["ports"]}
    assert selected.items() <= labels.items()
    assert endpoint["port"] == "metrics" and "metrics" in port_names
    assert endpoint["path"] == "/metrics"


def test_kserve_runtime_and_inference_service_fit_together(rendered):
    objects = rendered["kserve"]
    runtime, service = one(objects, "ClusterServingRuntime"), one(objects, "InferenceService")
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert model["modelFormat"]["name"] == "pytorch_python" and "pytorch_python" in formats
    assert re.match(r"^[a-z0-9]+://", model["storageUri"])
    (main,) = runtime["spec"]["containers"]
    given = flags(main["args"])
    assert (
        given["--model-repository"] == "/mnt/models"
    )  # where KServe's storage initializer puts it
    http = int(given["--http-port"])
    assert http == 8080  # KServe's HTTP port convention
    assert {p["containerPort"] for p in main["ports"]} == {int(given["--grpc-port"])}
    probes = {k: main[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}
    assert {p["port"] for p in probes.values()} == {http}
    assert probes["readinessProbe"]["path"] == "/v2/health/ready"
    assert runtime["spec"]["annotations"]["prometheus.kserve.io/port"] == given["--metrics-port"]
    volumes = {v["name"]: v for v in runtime["spec"]["volumes"]}
    (shm,) = [m["name"] for m in main["volumeMounts"] if m["mountPath"] == "/dev/shm"]
    assert volumes[shm]["emptyDir"]["medium"] == "Memory"
    # The runtime's container is a Kubernetes container: validate it as one.
    import kubernetes_validate

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "x"}}
    pod["spec"] = {"containers": [main], "volumes": runtime["spec"]["volumes"]}
    kubernetes_validate.validate(pod, KUBERNETES_VERSION, strict=True)


def test_dashboard_queries_use_only_metrics_that_exist():
    ours = {spec.name for spec in metrics.METRICS}
    used = deploy_utils.dashboard_metrics()
    suffixes = ("_sum", "_count", "_bucket")
    for name in (n for n in used if n.startswith("pytorch_backend_")):
        base = next((name[: -len(s)] for s in suffixes if name.endswith(s)), name)
        assert name in ours or base in ours, name
    assert {n for n in used if n.startswith("nv_")} >= deploy_utils.hpa_source_metrics()
