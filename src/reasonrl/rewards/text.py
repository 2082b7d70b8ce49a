"""The text of one completion, whether it is a plain string or a conversation.

TRL hands reward functions either strings (standard datasets) or lists of message dicts (conversational
datasets: `[{"role": "assistant", "content": "..."}]`). Every built-in reward reads completions through
`completion_text`, so each one accepts both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def completion_text(completion: Any) -> str:
    """The text a reward should score: `completion` itself if it is a string, else its assistant messages.

    For a conversational completion, the contents of the assistant messages (and messages without a role)
    are joined with newlines; tool and other messages are skipped because they are not the model's words.
    A message whose content is a list of parts (multimodal format) contributes its text parts; `None`
    content (a tool-call-only message) contributes nothing. A single message dict is accepted too.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        messages: Sequence[Any] = [completion]
    elif isinstance(completion, Sequence):
        messages = completion
    else:
        raise TypeError(
            f"a completion must be a string or a list of message dicts, got {type(completion).__name__}; "
            "pass 'text' or [{'role': 'assistant', 'content': 'text'}]"
        )
    texts = []
    for message in messages:
        if not isinstance(message, Mapping):
            raise TypeError(
                f"a conversational completion must hold message dicts, got {type(message).__name__}; "
                "pass [{'role': 'assistant', 'content': 'text'}]"
            )
        if message.get("role", "assistant") == "assistant":
            texts.append(_content_text(message.get("content")))
    return "\n".join(texts)


def _content_text(content: Any) -> str:
    """A message's content as text: a string, `None`, or a list of `{"type": "text", "text": ...}` parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = []
        for part in content:
            if isinstance(part, str):
                parts.append(part)
            elif isinstance(part, Mapping) and part.get("type", "text") == "text":
                parts.append(str(part.get("text", "")))
        return "".join(parts)
    return str(content)
