"""``kubectl kustomize`` renders the base, every component and the example overlay; every object
validates (``kubernetes-validate`` for built-in kinds, KEDA's CRD schema for ScaledObjects); the
pieces agree with each other and with the settings; the Role stays in the function namespace."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from smoelib.scaler.manifests import file_name, render_yaml, scaled_objects
from smoelib.settings import load_settings
from smoelib.topology import build_dag

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
BASE = MANIFESTS / "base"
EXAMPLE = MANIFESTS / "examples" / "bert-moe"
COMPONENTS = sorted(p.parent.name for p in (MANIFESTS / "components").glob("*/kustomization.yaml"))
CRD = ROOT / "tests" / "schemas" / "keda.sh_scaledobjects.yaml"  # vendored: tests/schemas
K8S_VERSION = "1.35.0"
FUNCTION_NAMESPACE = "openfaas-fn"
# Kinds with no schema here (CRDs of KEDA and the Prometheus Operator besides ScaledObject);
# their shape is checked by hand below.
HAND_CHECKED = {"TriggerAuthentication", "ServiceMonitor"}

# kubectl renders the kustomizations; under CI a missing kubectl fails, elsewhere it skips
pytestmark = pytest.mark.skipif(shutil.which("kubectl") is None and not os.environ.get("CI"),
                                reason="needs kubectl")


def kustomize(path: Path) -> list[dict]:
    out = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True,
                         timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def overlay(folder: Path, text: str) -> Path:
    """A throwaway kustomization in ``folder``; ``@/`` in ``text`` is the repository root
    (kustomize takes only relative paths)."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "kustomization.yaml").write_text(text.replace("@/", os.path.relpath(ROOT, folder)
                                                            + "/"))
    return folder


@functools.cache
def keda_validator() -> jsonschema.protocols.Validator:
    crd = yaml.safe_load(CRD.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return jsonschema.Draft202012Validator(version["schema"]["openAPIV3Schema"])


def problems(objects: list[dict]) -> list[str]:
    """Every object that does not validate, one line each."""
    found = []
    for obj in objects:
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            if obj["kind"] == "ScaledObject":
                keda_validator().validate(obj)
            elif obj["kind"] not in HAND_CHECKED:
                kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except (jsonschema.ValidationError, kubernetes_validate.ValidationError,
                kubernetes_validate.SchemaNotFoundError) as e:
            found.append(f"{where}: {getattr(e, 'message', e)}")
    return found


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


@pytest.fixture(scope="module")
def base() -> list[dict]:
    return kustomize(BASE)


@pytest.fixture(scope="module")
def example() -> list[dict]:
    return kustomize(EXAMPLE)


def test_base_renders_and_validates(base):
    assert problems(base) == []
    kinds = sorted(o["kind"] for o in base)
    assert kinds == sorted(["Namespace", "ServiceAccount", "Role", "RoleBinding", "ConfigMap",
                            "Deployment", "Service", "NetworkPolicy"])
    assert by_kind(base, "ScaledObject") == []


def test_example_overlay_renders_72_valid_scaled_objects_and_leaves_the_other_function(example):
    assert problems(example) == []
    scaled = by_kind(example, "ScaledObject")
    assert len(scaled) == 72
    dag = build_dag(config=ROOT / "examples" / "pipelines" / "bert-moe.yml")
    assert sorted(o["spec"]["scaleTargetRef"]["name"] for o in scaled) == sorted(
        dag.function_name(n) for n in dag.experts)
    (hpa,) = by_kind(example, "HorizontalPodAutoscaler")
    other = hpa["spec"]["scaleTargetRef"]["name"]
    assert other not in {o["spec"]["scaleTargetRef"]["name"] for o in scaled}
    assert other in {d["metadata"]["name"] for d in by_kind(example, "Deployment")}
    assert other not in dag.function_of.values()


def test_example_scaled_objects_are_what_the_generator_writes_today():
    dag = build_dag(config=ROOT / "examples" / "pipelines" / "bert-moe.yml")
    objects = scaled_objects(dag, load_settings())
    folder = EXAMPLE / "scaledobjects"
    stale = [file_name(o) for o in objects
             if (folder / file_name(o)).read_text() != render_yaml([o])]
    assert stale == [], ("regenerate: smoe manifests examples/pipelines/bert-moe.yml "
                         "-o manifests/examples/bert-moe/scaledobjects")
    listed = yaml.safe_load((folder / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in folder.glob("*.yaml")
                                    if p.name != "kustomization.yaml")


@pytest.mark.parametrize("component", COMPONENTS)
def test_every_component_renders_over_the_example(component, tmp_path):
    rendered = kustomize(overlay(tmp_path, f"resources: ['@/manifests/examples/bert-moe']\n"
                                           f"components: ['@/manifests/components/{component}']\n"))
    assert problems(rendered) == []
    only_base = kustomize(overlay(tmp_path / "base-only", f"resources: ['@/manifests/base']\n"
                                  f"components: ['@/manifests/components/{component}']\n"))
    assert problems(only_base) == []


def test_tls_component_switches_every_trigger_to_tls_with_the_trigger_authentication(tmp_path):
    rendered = kustomize(overlay(tmp_path, "resources: ['@/manifests/examples/bert-moe']\n"
                                           "components: ['@/manifests/components/tls']\n"))
    (auth,) = by_kind(rendered, "TriggerAuthentication")
    assert auth["metadata"]["namespace"] == FUNCTION_NAMESPACE
    params = {r["parameter"] for r in auth["spec"]["secretTargetRef"]}
    assert params == {"caCert", "tlsClientCert", "tlsClientKey"}
    assert all({"name", "key"} <= set(r) for r in auth["spec"]["secretTargetRef"])
    scaled = by_kind(rendered, "ScaledObject")
    assert len(scaled) == 72
    for obj in scaled:
        (trigger,) = obj["spec"]["triggers"]
        assert trigger["metadata"]["enableTLS"] == "true"
        assert trigger["authenticationRef"] == {"name": auth["metadata"]["name"],
                                                "kind": "TriggerAuthentication"}
        assert obj["metadata"]["namespace"] == auth["metadata"]["namespace"]
    (deploy,) = [d for d in by_kind(rendered, "Deployment") if d["metadata"]["name"] ==
                 "smoe-scaler"]
    pod = deploy["spec"]["template"]["spec"]
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
    assert secrets == {"smoe-scaler-tls"}
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    args = container["args"]
    for flag, key in (("--tls-cert", "tls.crt"), ("--tls-key", "tls.key"),
                      ("--tls-client-ca", "ca.crt")):
        assert f"{flag}={mounts['tls']}/{key}" in args
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert "grpc" not in container[probe]  # the kubelet's gRPC probe has no TLS


def test_service_monitor_scrapes_the_metrics_port(tmp_path, base):
    rendered = kustomize(overlay(
        tmp_path, "resources: ['@/manifests/base']\n"
                  "components: ['@/manifests/components/servicemonitor']\n"))
    (monitor,) = by_kind(rendered, "ServiceMonitor")
    (service,) = by_kind(base, "Service")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    labels = service["metadata"]["labels"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]


def test_role_and_binding_land_in_the_function_namespace(base, example, tmp_path):
    # An overlay moving its own objects with the unset-only namespace transformer (a plain
    # `namespace:` would move every object, see test_no_kustomization_sets_a_namespace).
    moved = kustomize(overlay(tmp_path, "resources: ['@/manifests/examples/bert-moe']\n"
                                        "transformers:\n- |-\n  apiVersion: builtin\n"
                                        "  kind: NamespaceTransformer\n"
                                        "  metadata: {name: ns, namespace: platform}\n"
                                        "  unsetOnly: true\n"))
    for objects in (base, example, moved):
        (role,) = by_kind(objects, "Role")
        (binding,) = by_kind(objects, "RoleBinding")
        (account,) = by_kind(objects, "ServiceAccount")
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == (
            FUNCTION_NAMESPACE)
        assert binding["roleRef"]["name"] == role["metadata"]["name"]
        assert binding["subjects"] == [{"kind": "ServiceAccount",
                                        "name": account["metadata"]["name"],
                                        "namespace": account["metadata"]["namespace"]}]
        rules = [r for r in role["rules"] if "pods/resize" in r["resources"]]
        assert rules and all(r["verbs"] == ["patch"] for r in rules)


def test_no_kustomization_sets_a_namespace():
    for path in MANIFESTS.rglob("kustomization.yaml"):
        assert "namespace" not in yaml.safe_load(path.read_text()), path


def test_scaler_deployment_is_hardened(base):
    (deploy,) = by_kind(base, "Deployment")
    (account,) = by_kind(base, "ServiceAccount")
    spec = deploy["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert {"cpu", "memory"} <= container["resources"]["limits"].keys()
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["grpc"]["port"] == 9090
        assert container[probe]["grpc"]["service"]
    # Every writable path is an emptyDir; the decision file lives on one.
    volumes = {v["name"]: v for v in pod["volumes"]}
    for mount in container["volumeMounts"]:
        if not mount.get("readOnly"):
            assert "emptyDir" in volumes[mount["name"]], mount
    assert any("decisions" in m["mountPath"] and "emptyDir" in volumes[m["name"]]
               for m in container["volumeMounts"])


def test_ports_agree_across_settings_deployment_service_policy_and_scaled_objects(base, example):
    (configmap,) = by_kind(base, "ConfigMap")
    settings = load_settings(yaml.safe_load(configmap["data"]["config.yaml"]))
    dag = build_dag(config=yaml.safe_load(configmap["data"]["pipeline.yml"]))
    assert dag.namespace == FUNCTION_NAMESPACE
    # The example overlay's ScaledObjects come from examples/pipelines/bert-moe.yml: the
    # pipeline the scaler serves must have the same experts, functions and bounds.
    bert = build_dag(config=ROOT / "examples" / "pipelines" / "bert-moe.yml")
    served = [(n, dag.function_name(n), dag.spec(n).replicas_min, dag.spec(n).replicas_max)
              for n in dag.experts]
    assert (dag.name, served) == (bert.name, [
        (n, bert.function_name(n), bert.spec(n).replicas_min, bert.spec(n).replicas_max)
        for n in bert.experts])
    (deploy,) = by_kind(base, "Deployment")
    (service,) = by_kind(base, "Service")
    ports = {p["name"]: p["containerPort"] for p in
             deploy["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert ports == {"grpc": settings.scaler.grpc_port, "metrics": settings.scaler.metrics_port}
    assert {p["name"]: p["port"] for p in service["spec"]["ports"]} == {"grpc": 9090,
                                                                      "metrics": 8080}
    assert all(p["targetPort"] in ports for p in service["spec"]["ports"])
    volumes = deploy["spec"]["template"]["spec"]["volumes"]
    assert {"name": configmap["metadata"]["name"]} == next(
        v["configMap"] for v in volumes if "configMap" in v)
    address = f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc:9090"
    for obj in by_kind(example, "ScaledObject"):
        assert obj["spec"]["triggers"][0]["metadata"]["scalerAddress"] == address
    (policy,) = by_kind(base, "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= (
        deploy["spec"]["template"]["metadata"]["labels"].items())
    admitted = {r["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]:
                [p["port"] for p in r["ports"]] for r in policy["spec"]["ingress"]}
    assert admitted == {"keda": ["grpc"], "monitoring": ["metrics"]}


def test_the_overlay_in_docs_install_renders_with_the_users_pipeline(tmp_path):
    text = (ROOT / "docs" / "install.md").read_text()
    block = text.split("```yaml\n# my-smoe/kustomization.yaml\n", 1)[1].split("```", 1)[0]
    assert "../smoe/manifests/base" in block
    folder = tmp_path / "my-smoe"
    overlay(folder, block.replace("../smoe/manifests/base", "@/manifests/base"))
    pipeline = (ROOT / "examples" / "pipelines" / "gpt2-moe.yml").read_text()
    (folder / "pipeline.yml").write_text(pipeline)
    (folder / "config.yaml").write_text("control:\n  interval_s: 5.0\n")
    rendered = kustomize(folder)
    assert problems(rendered) == []
    (configmap,) = by_kind(rendered, "ConfigMap")
    assert configmap["data"] == {"pipeline.yml": pipeline, "config.yaml": "control:\n  "
                                 "interval_s: 5.0\n"}
    (deploy,) = by_kind(rendered, "Deployment")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == "REGISTRY/smoe:0.1.0"
    assert {"configMap": {"name": configmap["metadata"]["name"]}} in [
        {k: v for k, v in vol.items() if k == "configMap"} for vol in pod["volumes"]]
    (role,) = by_kind(rendered, "Role")
    assert role["metadata"]["namespace"] == FUNCTION_NAMESPACE


def serve_parser():
    """The real ``smoe serve`` argument parser."""
    from smoelib.cli import build_parser

    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    assert "serve" in subparsers.choices
    return parser


@pytest.mark.parametrize("component", [None, "tls"])
def test_container_args_parse_as_smoe_serve(component, tmp_path):
    parser = serve_parser()
    folder = BASE if component is None else overlay(
        tmp_path, f"resources: ['@/manifests/base']\ncomponents: ['@/manifests/components/"
                  f"{component}']\n")
    (deploy,) = by_kind(kustomize(folder), "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    args = parser.parse_args(["serve", *container["args"]])  # exits (fails) on an unknown flag
    assert args.command == "serve"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in deploy["spec"]["template"]["spec"]["volumes"]}
    assert args.config == "/etc/smoe/config.yaml" and args.pipeline == ["/etc/smoe/pipeline.yml"]
    assert "configMap" in volumes[mounts["/etc/smoe"]]
    (decisions,) = args.decisions
    assert "emptyDir" in volumes[mounts[decisions]]   # the decision file's directory


def test_the_dry_run_flag_in_docs_install_is_one_smoe_serve_takes():
    parser = serve_parser()
    serve = next(a for a in parser._actions if a.dest == "command").choices["serve"]
    flags = {s for action in serve._actions for s in action.option_strings}
    text = (ROOT / "docs" / "install.md").read_text()
    assert '"value": "--dry-run"' in text
    assert "--dry-run" in flags


def test_probes_ask_the_health_services_the_scaler_registers(base):
    from smoelib.scaler import server
    (deploy,) = by_kind(base, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    assert container["livenessProbe"]["grpc"]["service"] in server.LIVENESS
    assert container["startupProbe"]["grpc"]["service"] in server.LIVENESS
    assert container["readinessProbe"]["grpc"]["service"] in server.READINESS


def test_the_mps_env_function_patch_is_what_docs_install_says_and_valid():
    """The pod-spec patch an mps-env expert needs (docs/install.md): no GPU request, the MPS
    pipe directory, host IPC; merged into an OpenFaaS function Deployment it validates."""
    from tests.integration.k8s_fixtures import openfaas_deployment

    patch = yaml.safe_load((ROOT / "manifests" / "examples" / "mps-env" /
                            "function-patch.yaml").read_text())
    pod = patch["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert pod["hostIPC"] is True and "nvidia.com/gpu" not in str(patch)
    assert env["CUDA_MPS_PIPE_DIRECTORY"] == container["volumeMounts"][0]["mountPath"] == \
        pod["volumes"][0]["hostPath"]["path"]
    assert "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE" not in env  # sMoE sets it
    dep = openfaas_deployment(patch["metadata"]["name"], env={"max_inflight": "4"})
    target = dep["spec"]["template"]["spec"]
    base = target["containers"][0]
    target.update({k: v for k, v in pod.items() if k != "containers"})
    base["env"] = base["env"] + container["env"]
    base["volumeMounts"] = container["volumeMounts"]
    dep.pop("status")
    kubernetes_validate.validate(dep, K8S_VERSION, strict=True)
    assert "manifests/examples/mps-env/function-patch.yaml" in (ROOT / "docs" /
                                                                "install.md").read_text()
