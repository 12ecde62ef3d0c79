"""What an LLM stream said, assembled from its events: the text, the tool calls and the
token usage, for the streams of OpenAI Responses, OpenAI Chat Completions and Anthropic
Messages. Fed one event's SSE data at a time (memory bounded by `MAX_TEXT`), so that a
stream of any length is summarised in one pass over its pages."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

MAX_TEXT = 256 * 1024
"""Characters of assembled text (and of each tool call's arguments) kept at most."""


@dataclass
class ToolCall:
    name: str
    arguments: str = ""
    id: str = ""


@dataclass
class Summary:
    kind: str | None = None  # "OpenAI Responses", "OpenAI Chat", "Anthropic Messages"
    model: str | None = None
    text: str = ""
    truncated: bool = False
    tools: list[ToolCall] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)
    _by_key: dict[Any, ToolCall] = field(default_factory=dict, repr=False)

    def feed(self, data: str | None) -> None:
        """One event's `data:` (an SSE event's data lines, joined)."""
        if not data or data[0] != "{":
            return
        try:
            obj = json.loads(data)
        except ValueError:
            return
        if not isinstance(obj, dict):
            return
        kind = obj.get("type")
        if obj.get("object") == "chat.completion.chunk":
            self._chat(obj)
        elif isinstance(kind, str) and kind.startswith("response."):
            self._responses(kind, obj)
        elif kind in _ANTHROPIC:
            self._anthropic(str(kind), obj)

    def _add_text(self, text: Any) -> None:
        if not isinstance(text, str):
            return
        room = MAX_TEXT - len(self.text)
        if len(text) > room:
            self.truncated = True
        self.text += text[: max(room, 0)]

    def _tool(self, key: Any, name: str = "", call_id: str = "") -> ToolCall:
        call = self._by_key.get(key)
        if call is None:
            call = self._by_key[key] = ToolCall(name, id=call_id)
            self.tools.append(call)
        if name and not call.name:
            call.name = name
        if call_id and not call.id:
            call.id = call_id
        return call

    def _args(self, call: ToolCall, more: Any) -> None:
        if isinstance(more, str) and len(call.arguments) < MAX_TEXT:
            call.arguments += more

    def _chat(self, obj: dict[str, Any]) -> None:
        self.kind = "OpenAI Chat"
        self.model = self.model or obj.get("model")
        for choice in obj.get("choices") or []:
            delta = choice.get("delta") or {}
            self._add_text(delta.get("content"))
            for tc in delta.get("tool_calls") or []:
                fn = tc.get("function") or {}
                key = ("chat", tc.get("index"))
                call = self._tool(key, fn.get("name") or "", tc.get("id") or "")
                self._args(call, fn.get("arguments"))
        if isinstance(obj.get("usage"), dict):
            self.usage = obj["usage"]

    def _responses(self, kind: str, obj: dict[str, Any]) -> None:
        self.kind = "OpenAI Responses"
        response = obj.get("response")
        if isinstance(response, dict):
            self.model = response.get("model") or self.model
            if isinstance(response.get("usage"), dict):
                self.usage = response["usage"]
        if kind == "response.output_text.delta":
            self._add_text(obj.get("delta"))
        elif kind == "response.output_item.added":
            item = obj.get("item") or {}
            if item.get("type") == "function_call":
                key = ("resp", item.get("id"))
                self._tool(key, item.get("name") or "", item.get("call_id") or "")
        elif kind == "response.function_call_arguments.delta":
            self._args(self._tool(("resp", obj.get("item_id"))), obj.get("delta"))
        elif kind == "response.output_item.done":
            item = obj.get("item") or {}
            if item.get("type") == "function_call":
                call = self._tool(("resp", item.get("id")), item.get("name") or "")
                if isinstance(item.get("arguments"), str):
                    call.arguments = item["arguments"][:MAX_TEXT]

    def _anthropic(self, kind: str, obj: dict[str, Any]) -> None:
        self.kind = "Anthropic Messages"
        if kind == "message_start":
            message = obj.get("message") or {}
            self.model = message.get("model") or self.model
            if isinstance(message.get("usage"), dict):
                self.usage = dict(message["usage"])
        elif kind == "content_block_start":
            block = obj.get("content_block") or {}
            if block.get("type") == "tool_use":
                key = ("anth", obj.get("index"))
                self._tool(key, block.get("name") or "", block.get("id") or "")
            elif block.get("type") == "text":
                self._add_text(block.get("text"))
        elif kind == "content_block_delta":
            delta = obj.get("delta") or {}
            if delta.get("type") == "text_delta":
                self._add_text(delta.get("text"))
            elif delta.get("type") == "input_json_delta":
                self._args(self._tool(("anth", obj.get("index"))), delta.get("partial_json"))
        elif kind == "message_delta" and isinstance(obj.get("usage"), dict):
            self.usage.update(obj["usage"])


_ANTHROPIC = frozenset(
    {
        "message_start",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
    }
)
