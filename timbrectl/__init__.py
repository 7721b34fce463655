"""Thin client side of Timbre: the client library and the `timbrectl` command."""
