"""Trainer simulator: a real HTTP stand-in for the RL trainer that hosts the policy model.

It serves ``POST /v1/completions`` the way the trainer does in the remote rollout protocol,
keeps each rollout's token sequence and response mask, and rejects a wrong mask. The model's
behaviour is scripted by the URL (``/s/<scenario>[/<key>=<value>...]/v1/completions``).
Run it with ``python -m rollout_server.sim --host 127.0.0.1 --port 8100 --tokenizer Qwen/Qwen3-8B``.

Modules: ``scenarios`` (pure scripting), ``state`` (mask bookkeeping), ``model`` (tokenizer and
sampling), ``app`` (the Sanic app), ``procs`` (starting servers for tests and benchmarks).
Importing this package imports none of them, so that ``procs`` stays free of transformers.
"""
