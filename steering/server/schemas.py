"""Request bodies of the OpenAI-compatible endpoints (pydantic models).

The shapes follow OpenAI's chat and legacy completions APIs, plus one field of
our own, ``steering``: a list of terms ``{"vector", "coef", "layers",
"apply_to", "mode"}`` (``positions``, the old name of ``apply_to``, is still
accepted and marked deprecated in the OpenAPI schema) (the ``openai`` client sends it through ``extra_body``).

Unknown fields are refused (``extra="forbid"``): a typo such as ``"steer"``
would otherwise return an unsteered answer without a word. A few OpenAI
parameters the server does not implement are accepted only at their neutral
value, so clients that always send them keep working. Limits that depend on
the server's configuration are checked later, in `steering.server.validate`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from steering.apply import Mode
from steering.hooks import ApplyTo

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SteeringTerm(_Body):
    """One vector applied to this request's rows: ``coef * vector`` added at ``layers``.

    Attributes:
        vector: file stem of a vector in the server's vectors directory.
        coef: multiplier; negative subtracts the behaviour (not with ``ablate``).
        layers: a subset of the vector's layers (default: all of them).
        apply_to: ``all`` tokens, only the ``prompt``, or only ``generated`` ones.
        positions: deprecated name of ``apply_to``.
        mode: any mode of ``st.steer`` (`steering.apply.MODES`): ``add`` the
            vector; ``ablate`` its direction (no coef); ``clamp``, ``angular``
            (coef in degrees), ``affine_add`` or ``affine_ablate`` (no coef),
            one vector per layer. At a layer, ablation runs first, then the
            one-vector mode, then the added terms.
    """

    vector: str
    coef: FiniteFloat = 1.0
    layers: list[int] | None = None
    apply_to: ApplyTo = "all"
    mode: Mode = "add"
    positions: ApplyTo | None = Field(default=None, deprecated="use apply_to (same values)", description="Deprecated: use apply_to.")

    @model_validator(mode="after")
    def _old_positions(self) -> SteeringTerm:
        old = self.__dict__.get("positions")  # not self.positions: pydantic warns on reading a deprecated field
        if old is not None:
            if "apply_to" in self.model_fields_set and self.apply_to != old:
                raise ValueError("positions is the old name of apply_to; give only apply_to")
            self.apply_to = old
        return self


class ConditionTerm(_Body):
    """A condition of conditional steering: steer this request only if its prompt meets it.

    Attributes:
        vector: file stem of the condition vector (e.g. a ``steering run
            experiment=condition_point`` run's ``condition.safetensors``, copied in).
        layer: the condition layer (in the vector; negative counts from the end).
        threshold: cosine threshold in ``[-1, 1]``.
        above: the condition holds for cosines above the threshold (``false``: below).
    """

    vector: str
    layer: int
    threshold: FiniteFloat = Field(ge=-1.0, le=1.0)
    above: bool = True


class StreamOptions(_Body):
    include_usage: bool = False


class _Generation(_Body):
    """Fields shared by chat and text completions."""

    model: str
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: FiniteFloat | None = Field(default=None, ge=0.0, le=2.0)
    top_p: FiniteFloat | None = Field(default=None, gt=0.0, le=1.0)
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(default=1, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    steering: list[SteeringTerm] | None = Field(
        default=None,
        description="Steering of this request: terms {vector, coef, layers, apply_to, mode}, each adding coef times a "
        "vector from the server's vectors directory (or, with another mode, ablating, clamping, rotating or affinely "
        "editing along its direction, as st.steer does). "
        "GET /v1/vectors lists the vectors.",
    )
    steering_condition: list[ConditionTerm] | None = Field(
        default=None,
        description="Conditional steering: the request's steering applies only if its prompt meets these conditions "
        "(cosine of the prompt's mean hidden state at the layer with the vector, against the threshold), combined "
        "by steering_combine; otherwise it runs unsteered.",
    )
    steering_combine: Literal["and", "or"] = "and"
    user: str | None = None
    # Accepted only at their neutral values (see `neutral_fields`).
    frequency_penalty: FiniteFloat | None = None
    presence_penalty: FiniteFloat | None = None
    logit_bias: dict[str, float] | None = None
    logprobs: Any = None

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, value: str | list[str] | None) -> str | list[str] | None:
        items = [value] if isinstance(value, str) else value or []
        if any(s == "" for s in items):
            raise ValueError("stop sequences must not be empty strings")
        return value

    def stop_list(self) -> list[str]:
        """``stop`` as a list (a single string becomes one item)."""
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def neutral_fields(self) -> list[tuple[str, Any]]:
        """Unimplemented parameters given a non-neutral value: ``(name, value)``."""
        bad = []
        for name in ("frequency_penalty", "presence_penalty"):
            value = getattr(self, name)
            if value not in (None, 0, 0.0):
                bad.append((name, value))
        if self.logit_bias:
            bad.append(("logit_bias", self.logit_bias))
        if self.logprobs not in (None, False, 0):
            bad.append(("logprobs", self.logprobs))
        return bad


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    """A chat turn; ``content`` is a string or a list of text parts."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]
    name: str | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class ChatCompletionRequest(_Generation):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    top_logprobs: int | None = None

    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` (the newer name) or ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    def neutral_fields(self) -> list[tuple[str, Any]]:
        bad = super().neutral_fields()
        if self.top_logprobs not in (None, 0):
            bad.append(("top_logprobs", self.top_logprobs))
        return bad


class CompletionRequest(_Generation):
    """``POST /v1/completions``: one prompt string or a list of them."""

    prompt: str | list[str]
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens

    def neutral_fields(self) -> list[tuple[str, Any]]:
        bad = super().neutral_fields()
        if self.echo:
            bad.append(("echo", self.echo))
        if self.suffix:
            bad.append(("suffix", self.suffix))
        if self.best_of not in (None, 1):
            bad.append(("best_of", self.best_of))
        return bad
