"""rollout-server: the remote rollout server of LLM RL training, with exact response masks.

The public API is small: ``create_app`` (the Sanic app factory), ``Settings``, the wire models
of ``rollout_server.protocol`` and the error types of ``rollout_server.errors``.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
