"""Test doubles that speak real wire formats (an OpenAI-compatible VLM server), for tests only."""
