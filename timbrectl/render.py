"""Human-readable output for timbrectl (``--json`` bypasses all of this)."""

from __future__ import annotations

from typing import Any


def duration(seconds: float) -> str:
    """``3d 4h``, ``2h 5m``, ``4m 10s``, ``12.3s``."""
    s = int(seconds)
    days, rem = divmod(s, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    if minutes:
        return f"{minutes}m {secs}s"
    return f"{seconds:.1f}s"


def size(n: float) -> str:
    """Bytes as ``1.2 GiB``."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def status(st: dict[str, Any]) -> str:
    """The ``timbrectl status`` screen."""
    dev = st["device"]
    active = dev["active"]
    device = (f"{active['name']} ({active['type']}, {active['dtype']}, "
              f"{active['threads']} threads)" if active
              else f"{dev['requested']} (worker not started yet)")
    models = ", ".join(
        f"{m['model']} [{m['device']}, {size(m['memory_bytes'])}]" for m in st["models"]
    ) or "none loaded"
    rows = [
        ("socket", st["socket"]),
        ("config", st["config_path"] or "(no file; defaults)"),
        ("log", st["log_file"] or "stderr"),
        ("device", device),
        ("models", models),
        ("queue", f"{st['queue']['queued']} queued, {st['queue']['running']} running"),
        ("clients", str(st["connections"])),
    ]
    head = (f"timbred {st['version']} (protocol {st['protocol_version']}), pid {st['pid']}, "
            f"up {duration(st['uptime_s'])}")
    return "\n".join([head, *(f"  {k:<8} {v}" for k, v in rows)])
