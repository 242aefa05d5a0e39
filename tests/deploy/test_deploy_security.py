"""The deploy examples close both doors: the API key from a Secret (Kubernetes) or a root-only
environment file (systemd), never a literal in the artefact, and a trainer allowlist set."""

from __future__ import annotations

from rollout_server.security import UrlAllowlist
from rollout_server.settings import Settings
from tests.deploy.test_deploy import container_env, server_container, unit_env, unit_values


def test_kubernetes_takes_the_key_from_a_secret_and_sets_an_allowlist() -> None:
    env = {e["name"]: e for e in server_container()["env"]}
    key = env["ROLLOUT_API_KEY"]
    assert "value" not in key, "a key written in the manifest is no secret"
    ref = key["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"] and not ref.get("optional", False)
    settings = Settings.from_env(container_env(server_container()))
    assert UrlAllowlist(settings.trainer_url_allowlist).enabled
    assert "METRICS_API_KEY" not in env, "the prometheus.io annotations scrape without a key"


def test_systemd_reads_the_key_from_a_required_environment_file() -> None:
    assert "ROLLOUT_API_KEY" not in unit_env() and "TRAINER_URL_ALLOWLIST" not in unit_env()
    required = [path for path in unit_values("EnvironmentFile") if not path.startswith("-")]
    assert required == ["/etc/rollout-server/secrets.env"]
