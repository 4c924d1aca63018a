"""What clients send, in OpenAI's shapes, validated by pydantic (and published in /openapi.json).

Fields OpenAI defines but we cannot honour are accepted only at their neutral value, so a client
never silently gets something other than what it asked for.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")  # clients send fields like `user`; they change nothing here


class TextPart(_Body):
    type: Literal["text"]
    text: str


class Message(_Body):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)


class StreamOptions(_Body):
    include_usage: bool = False


class _Sampled(_Body):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    n: Literal[1] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: Literal[0, 0.0] = 0.0
    frequency_penalty: Literal[0, 0.0] = 0.0
    logprobs: Literal[False] | None = None

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        stops = [v] if isinstance(v, str) else v
        if stops is not None and (len(stops) > 4 or not all(stops)):
            raise ValueError("up to 4 non-empty stop strings")
        return stops

    def stops(self) -> list[str]:
        return list(self.stop or [])


class ChatRequest(_Sampled):
    messages: list[Message] = Field(min_length=1)

    @field_validator("messages")
    @classmethod
    def _has_text(cls, v):
        if not any(m.text().strip() for m in v):
            raise ValueError("every message is empty")
        return v


class CompletionRequest(_Sampled):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _one(cls, v):
        if isinstance(v, list):
            if len(v) != 1:
                raise ValueError("one prompt per request (a list must hold exactly one string)")
            v = v[0]
        if not v.strip():
            raise ValueError("empty prompt")
        return v


class TextsRequest(_Body):
    """/v1/classify and /v1/ner: a text or a batch of texts for a fine-tuned run."""

    model: str = Field(min_length=1, max_length=256)
    input: str | list[str] = Field(min_length=1)

    @field_validator("input")
    @classmethod
    def _texts(cls, v):
        texts = [v] if isinstance(v, str) else v
        if len(texts) > 256:
            raise ValueError("at most 256 texts per request")
        if not all(t.strip() for t in texts):
            raise ValueError("empty text")
        return texts


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """OpenAI's error object, which its clients turn into typed exceptions."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
