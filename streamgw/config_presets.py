"""Vendors that speak OpenAI-compatible Chat Completions: defaults and quirks as data, not modules.

A config table ``[providers.NAME]`` with ``preset = "deepseek"`` (or with ``NAME`` itself a preset name
and no ``type``/``base_url``) takes the base URL, key variable and flags from here; anything set in the
table overrides them. With no config file, every preset whose key variable is set becomes a provider.
This is configuration data (it sits with ``streamgw.config``, below the providers that read the flags).
"""

from __future__ import annotations

from dataclasses import dataclass

from streamgw.config import ChatFlags

#: reasoning requested with ``reasoning_effort`` (OpenAI, xAI, Groq, Ollama /v1, vLLM)
EFFORT = "reasoning_effort"
#: OpenRouter's ``reasoning: {"effort": ...}``
OPENROUTER = "openrouter"
#: on/off switch ``thinking: {"type": "enabled" | "disabled"}`` (DeepSeek, Z.ai, Xiaomi MiMo)
THINKING = "thinking"
#: on/off switch ``enable_thinking: true | false`` (Alibaba Bailian / DashScope)
ENABLE_THINKING = "enable_thinking"
#: the vendor takes no reasoning control: ``reasoning.effort`` is not sent
NO_REASONING = "none"


@dataclass(frozen=True, slots=True)
class Preset:
    """Defaults for one OpenAI-compatible vendor."""

    base_url: str  # "" when the deployment decides (Oracle: region and tenancy)
    key_env: str  # "" when no key is needed
    flags: ChatFlags
    base_url_env: str = ""


PRESETS: dict[str, Preset] = {
    "openai-chat": Preset("https://api.openai.com/v1", "OPENAI_API_KEY",
                          ChatFlags(max_tokens_param="max_completion_tokens", system_role="developer")),
    "groq": Preset("https://api.groq.com/openai/v1", "GROQ_API_KEY", ChatFlags()),
    "openrouter": Preset("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY",
                         ChatFlags(reasoning_style=OPENROUTER)),
    "deepseek": Preset("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY",
                       ChatFlags(reasoning_style=THINKING, replay_reasoning="reasoning_content"),
                       base_url_env="DEEPSEEK_BASE_URL"),
    "xai": Preset("https://api.x.ai/v1", "XAI_API_KEY", ChatFlags()),
    "zai": Preset("https://api.z.ai/api/paas/v4", "ZAI_API_KEY",
                  ChatFlags(reasoning_style=THINKING, replay_reasoning="reasoning_content"),
                  base_url_env="ZAI_BASE_URL"),
    "minimax": Preset("https://api.minimax.io/v1", "MINIMAX_API_KEY",
                      ChatFlags(reasoning_style=NO_REASONING), base_url_env="MINIMAX_BASE_URL"),
    "xiaomi": Preset("https://api.xiaomimimo.com/v1", "XIAOMI_API_KEY",
                     ChatFlags(max_tokens_param="max_completion_tokens", reasoning_style=THINKING,
                               replay_reasoning="reasoning_content"), base_url_env="XIAOMI_BASE_URL"),
    "opencode-go": Preset("https://opencode.ai/zen/go/v1", "OPENCODE_GO_API_KEY", ChatFlags(),
                          base_url_env="OPENCODE_GO_BASE_URL"),
    "oracle": Preset("", "ORACLE_API_KEY", ChatFlags(), base_url_env="ORACLE_BASE_URL"),
    "bailian": Preset("https://dashscope-intl.aliyuncs.com/compatible-mode/v1", "BAILIAN_API_KEY",
                      ChatFlags(reasoning_style=ENABLE_THINKING), base_url_env="BAILIAN_BASE_URL"),
    "vllm": Preset("http://localhost:8000/v1", "VLLM_API_KEY", ChatFlags(replay_reasoning="reasoning"),
                   base_url_env="VLLM_BASE_URL"),
    "ollama-v1": Preset("http://localhost:11434/v1", "", ChatFlags(replay_reasoning="reasoning")),
}
