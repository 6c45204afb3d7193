"""Agents: prompt building (step-wise window or full chat) and response parsing with character spans."""

from agentrl.agents.formats import (
    RESPONSE_FORMATS,
    ExpertAnswer,
    ParsedResponse,
    ResponseFormat,
    Span,
    ToolCall,
    get_format,
    parse_hiper,
    parse_openai_message,
    parse_response,
    parse_think_action,
    parse_tool_calls,
)
from agentrl.agents.prompts import (
    DEFAULT_SYSTEM_PROMPT,
    ChatPrompt,
    ChatTokens,
    Message,
    PromptSettings,
    StepPrompt,
    render_chat,
    tokenize_chat,
)
from agentrl.agents.spans import response_token_masks, span_masks, token_offsets, token_spans

__all__ = [
    "DEFAULT_SYSTEM_PROMPT",
    "RESPONSE_FORMATS",
    "ChatPrompt",
    "ChatTokens",
    "ExpertAnswer",
    "Message",
    "ParsedResponse",
    "PromptSettings",
    "ResponseFormat",
    "Span",
    "StepPrompt",
    "ToolCall",
    "get_format",
    "parse_hiper",
    "parse_openai_message",
    "parse_response",
    "parse_think_action",
    "parse_tool_calls",
    "render_chat",
    "response_token_masks",
    "span_masks",
    "token_offsets",
    "token_spans",
    "tokenize_chat",
]
