"""Timbre studio: a prompt_toolkit TUI that attaches to timbred."""
