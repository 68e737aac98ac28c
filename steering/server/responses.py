"""OpenAI response bodies and server-sent-event chunks.

Chat completions answer ``object: "chat.completion"`` (streamed:
``"chat.completion.chunk"`` with a ``delta``); text completions answer
``object: "text_completion"`` both ways. A stream sends, per choice, a first
chunk (chat: the assistant role), content chunks, a last chunk with the
``finish_reason``, then an optional usage chunk (``stream_options.include_usage``)
and finally ``data: [DONE]``.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from .engine import Finished

Kind = Literal["chat", "text"]


def usage(prompt_tokens: int, finals: Sequence[Finished]) -> dict[str, int]:
    completion = sum(f.completion_tokens for f in finals)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion, "total_tokens": prompt_tokens + completion}


@dataclass(frozen=True)
class ResponseShape:
    """Id, timestamp and model name shared by every body and chunk of one response."""

    kind: Kind
    model: str
    id: str = ""
    created: int = 0

    @classmethod
    def new(cls, kind: Kind, model: str) -> ResponseShape:
        prefix = "chatcmpl" if kind == "chat" else "cmpl"
        return cls(kind, model, f"{prefix}-{uuid.uuid4().hex[:24]}", int(time.time()))

    def _head(self, chunk: bool) -> dict[str, Any]:
        obj = ("chat.completion.chunk" if chunk else "chat.completion") if self.kind == "chat" else "text_completion"
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}

    def body(self, finals: Sequence[Finished], prompt_tokens: int) -> dict[str, Any]:
        """The whole (non-streamed) response."""
        choices = []
        for index, final in enumerate(finals):
            if self.kind == "chat":
                choice = {"index": index, "message": {"role": "assistant", "content": final.text}, "logprobs": None}
            else:
                choice = {"index": index, "text": final.text, "logprobs": None}
            choices.append({**choice, "finish_reason": final.finish_reason})
        return {**self._head(False), "choices": choices, "usage": usage(prompt_tokens, finals)}

    def chunk(
        self, index: int, text: str | None = None, *, role: bool = False, finish_reason: str | None = None, with_usage_field: bool = False
    ) -> str:
        """One SSE event for choice ``index``."""
        if self.kind == "chat":
            delta: dict[str, str] = {}
            if role:
                delta["role"] = "assistant"
            if text is not None:
                delta["content"] = text
            choice: dict[str, Any] = {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        else:
            choice = {"index": index, "text": text or "", "logprobs": None, "finish_reason": finish_reason}
        payload = {**self._head(True), "choices": [choice]}
        if with_usage_field:  # OpenAI sends "usage": null on every chunk but the last when usage is asked for
            payload["usage"] = None
        return sse(payload)

    def usage_chunk(self, prompt_tokens: int, finals: Sequence[Finished]) -> str:
        return sse({**self._head(True), "choices": [], "usage": usage(prompt_tokens, finals)})


def sse(payload: dict[str, Any]) -> str:
    """``data: <json>`` and the blank line that ends an event."""
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


DONE = "data: [DONE]\n\n"
