"""Write a tiny random-weight Qwen3 model next to the real Qwen3 tokenizer, for vLLM on CPU.

Runs in the vLLM venv (it needs torch); the tokenizer comes from a directory the caller names,
normally the Qwen3 snapshot of the offline Hugging Face cache that ``tokenize_pool.hf_cache``
seeds. Nothing is downloaded. The weights are random: the model samples arbitrary token ids,
many of which do not survive decode + re-encode, the stress a token trajectory must survive.

    .venv-vllm/bin/python bench/engine/make_model.py --tokenizer SNAPSHOT_DIR --out DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# head_dim must be one vLLM's CPU attention backend supports (32, 64, 80, 96, 112, 128...):
# 16 loads, but the first request fails with "Unsupported CPU attention configuration".
DIMS = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 4096,
    "tie_word_embeddings": False,
}


def make_model(tokenizer_dir: Path, out: Path, seed: int) -> None:
    import torch
    from transformers import AutoTokenizer, Qwen3Config, Qwen3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    # Pad the embedding table to a multiple of 64, as released checkpoints do.
    vocab = -(-len(tokenizer) // 64) * 64
    config = Qwen3Config(
        vocab_size=vocab,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        torch_dtype="bfloat16",
        **DIMS,
    )
    torch.manual_seed(seed)
    model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tokenizer", type=Path, required=True, help="directory of the Qwen3 tokenizer files"
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write the model into")
    parser.add_argument("--seed", type=int, default=0, help="torch seed of the random weights")
    args = parser.parse_args(argv)
    make_model(args.tokenizer, args.out, args.seed)
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
