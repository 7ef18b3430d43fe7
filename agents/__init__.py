"""Baseline agents for the RTFM/* environments (two methods: ``reset`` and ``act``)."""

from agents.base import Agent, RandomAgent, ShortestPathAgent

__all__ = ["Agent", "RandomAgent", "ShortestPathAgent"]
