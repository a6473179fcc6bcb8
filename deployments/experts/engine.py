"""The vLLM engine deployment of ``vllm`` experts (and of the LoRA adapters on them): ray.serve.llm's
LLMServer, plus what the router asks of its experts beyond OpenAI."""

from __future__ import annotations

from ray.serve.llm import LLMServer


class ExpertServer(LLMServer):
    """ray.serve.llm's LLMServer, plus what the router asks of its experts beyond OpenAI."""

    async def engine_load(self) -> dict[str, int]:
        """Requests the engine holds right now (running or waiting): 0 once abandoned requests are
        cancelled (the router cancels them on timeout, fallback and client disconnect)."""
        client = getattr(self.engine, "_engine_client", None)
        return {"unfinished_requests": int(client.get_num_unfinished_requests()) if client else 0}
