"""The deploy examples close both doors: the API key from a Secret (Kubernetes) or a root-only
environment file (systemd), never a literal in the artefact, and a trainer allowlist set."""

from __future__ import annotations

from rollout_server.security import UrlAllowlist
from rollout_server.settings import Settings
from tests.deploy.test_deploy import DEPLOY, server_container, unit_env, unit_values


def test_kubernetes_takes_the_key_and_the_allowlist_from_a_required_secret() -> None:
    env = {e["name"]: e for e in server_container()["env"]}
    for name in ("ROLLOUT_API_KEY", "TRAINER_URL_ALLOWLIST"):
        assert "value" not in env[name], f"{name} is written in the manifest"
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref["name"] == "rollout-server-auth" and ref["key"] and not ref.get("optional", False)
    assert "METRICS_API_KEY" not in env, "the prometheus.io annotations scrape without a key"
    # The example value the README gives the Secret is a valid allowlist.
    example = "*.training.svc.cluster.local"
    assert f"trainer-url-allowlist='{example}'" in (DEPLOY / "README.md").read_text()
    assert UrlAllowlist(Settings.from_env({"TRAINER_URL_ALLOWLIST": example}).trainer_url_allowlist).enabled


def test_systemd_reads_the_key_from_a_required_environment_file() -> None:
    assert "ROLLOUT_API_KEY" not in unit_env() and "TRAINER_URL_ALLOWLIST" not in unit_env()
    required = [path for path in unit_values("EnvironmentFile") if not path.startswith("-")]
    assert required == ["/etc/rollout-server/secrets.env"]
