"""Versioned prompt templates; see ``prompts.loader``."""

from geoguide.prompts.loader import PromptError, PromptTemplate, list_prompts, load_prompt, parse_template

__all__ = ["PromptError", "PromptTemplate", "list_prompts", "load_prompt", "parse_template"]
