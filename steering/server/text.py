"""Text in and out: prompt encoding, and streamed decoding with stop sequences.

`Codec` wraps the tokenizer behind one lock: fast tokenizers are not safe to
call from two threads at once (their padding and truncation settings are
mutable state), and the HTTP handlers encode while the scheduler decodes.

`TextStream` turns a growing list of token ids into text deltas. It decodes
the whole completion each time (completions are short next to a forward
pass) and holds back two kinds of tail: an unfinished UTF-8 character
(decoded as U+FFFD) and a suffix that may be the start of a stop sequence. So
the streamed deltas always add up to the final text, and a stop sequence never
leaks out, even split across tokens.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Any

from steering.vectors.text import encode_chat, encode_prompt, has_chat_template

_REPLACEMENT = "\ufffd"


class Codec:
    """Thread-safe encoding and decoding for one tokenizer.

    Args:
        tokenizer: a Hugging Face tokenizer.
        eos_ids: token ids that end a completion.
    """

    def __init__(self, tokenizer: Any, eos_ids: Sequence[int]) -> None:
        self.tokenizer = tokenizer
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.lock = threading.Lock()

    @property
    def has_chat_template(self) -> bool:
        return has_chat_template(self.tokenizer)

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        """Token ids of ``messages`` rendered by the chat template, ready for the assistant turn (`vectors.text.encode_chat`)."""
        with self.lock:
            return encode_chat(self.tokenizer, messages)

    def encode_prompt(self, prompt: str) -> list[int]:
        """Token ids of a plain prompt, with the tokenizer's usual special tokens (no chat template)."""
        with self.lock:
            return encode_prompt(self.tokenizer, prompt, chat=False)

    def decode_token(self, token_id: int) -> str:
        """One token's text, special tokens included (for per-token displays)."""
        with self.lock:
            return str(self.tokenizer.decode([int(token_id)], skip_special_tokens=False, clean_up_tokenization_spaces=False))

    def decode(self, ids: Sequence[int]) -> str:
        with self.lock:
            return self.tokenizer.decode(list(ids), skip_special_tokens=True, clean_up_tokenization_spaces=False)


class TextStream:
    """Text of one completion, released in safe pieces.

    Example:
        >>> stream = TextStream(codec, stop=["\\n\\n"])  # doctest: +SKIP
        >>> delta, stopped = stream.push(token_id)  # doctest: +SKIP
        >>> # at the end: whatever was held back
        >>> rest = stream.flush()  # doctest: +SKIP
    """

    def __init__(self, codec: Codec, stop: Sequence[str] = ()) -> None:
        self._codec = codec
        self._stop = tuple(stop)
        self._ids: list[int] = []
        self._sent = 0
        self.text = ""

    def push(self, token: int) -> tuple[str, bool]:
        """Add ``token``; return ``(new_text_to_send, hit_a_stop_sequence)``."""
        self._ids.append(token)
        text = self._codec.decode(self._ids)
        cut = self._first_stop(text)
        if cut is not None:
            self.text = text[:cut]
            return self._release(len(self.text)), True
        self.text = text
        return self._release(self._safe_end(text)), False

    def flush(self) -> str:
        """Everything not yet sent (call once the completion is over)."""
        return self._release(len(self.text))

    def _release(self, end: int) -> str:
        end = max(end, self._sent)
        piece, self._sent = self.text[self._sent : end], end
        return piece

    def _first_stop(self, text: str) -> int | None:
        # Only the tail can hold a new match: earlier text was checked already.
        hits = [i for s in self._stop if (i := text.find(s, max(0, self._sent - len(s)))) >= 0]
        return min(hits) if hits else None

    def _safe_end(self, text: str) -> int:
        end = len(text)
        while end > self._sent and text[end - 1] == _REPLACEMENT:
            end -= 1
        safe = end
        for stop in self._stop:  # each stop judged on the same tail; keep the most cautious cut
            for k in range(min(len(stop) - 1, end - self._sent), 0, -1):
                if text[end - k : end] == stop[:k]:
                    safe = min(safe, end - k)
                    break
        return safe
