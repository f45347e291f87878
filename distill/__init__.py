"""distill: turn one large teacher LLM into a fleet of small function-calling students."""

__version__ = "0.1.0"
