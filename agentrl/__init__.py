"""agentrl: multi-turn agent environments, credit assignment and a LoRA RL trainer for LLM agents."""

__version__ = "0.1.0"
