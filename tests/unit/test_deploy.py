"""The KubeRay manifest under deploy/: it parses, is current, and its serve config is valid."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import yaml

from serve_app.core.settings import DEFAULT_SERVE_PROFILE, SERVE_PROFILES
from serve_app.runtime.config import AppConfig
from serve_app.workflow.loader import load_workflows

ROOT = pathlib.Path(__file__).parents[2]


def test_the_rayservice_manifest_is_generated_from_serve_config() -> None:
    out = subprocess.run([sys.executable, "scripts/gen_rayservice.py", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_the_rayservice_serve_config_validates() -> None:
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "rayservice.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"Secret", "RayService"}
    service = kinds["RayService"]
    assert service["apiVersion"] == "ray.io/v1" and service["spec"]["rayClusterConfig"]["rayVersion"] == "2.60.0"
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    app = serve_config["applications"][0]
    assert app["import_path"] == "graphs.serveflow:build_app"
    config = AppConfig.from_args(app["args"])
    assert config.workflows.store == "postgres" and config.workflows.dsn is None  # the DSN comes from the Secret
    assert config.coordinator.num_replicas == 2
    assert load_workflows(config.workflows, config.routes())  # the workflows validate too
    pods = [service["spec"]["rayClusterConfig"]["headGroupSpec"]] + service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    secret = kinds["Secret"]["metadata"]["name"]
    for group in pods:
        env = group["template"]["spec"]["containers"][0]["env"]
        assert {"name": "SERVEFLOW_DATABASE_URL", "valueFrom": {"secretKeyRef": {"name": secret, "key": "dsn"}}} in env
        # serveflow's default Serve profile, as the README's `serve run` has it (Serve reads it at process start).
        profile = {e["name"]: e["value"] for e in env if "value" in e}
        assert profile == SERVE_PROFILES[DEFAULT_SERVE_PROFILE]
