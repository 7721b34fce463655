"""The sans-IO protocol core shared by the daemon and its clients: framing and JSON-RPC."""
