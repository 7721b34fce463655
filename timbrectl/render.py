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
    rows += executor_rows(st["executor"])
    head = (f"timbred {st['version']} (protocol {st['protocol_version']}), pid {st['pid']}, "
            f"up {duration(st['uptime_s'])}")
    return "\n".join([head, *(f"  {k:<8} {v}" for k, v in rows)])


def executor_rows(ex: dict[str, Any]) -> list[tuple[str, str]]:
    """Where jobs run (``daemon.status``' ``executor``): the cluster and each worker with
    what it holds warm. Nothing for the one local worker of a default setup (the device and
    models rows say it all)."""
    rows: list[tuple[str, str]] = []
    if ex["error"]:
        rows.append(("cluster", f"{ex['error']} (jobs fail until it is reachable)"))
    elif ex["fallback"]:
        rows.append(("cluster", f"{ex['fallback']}; running on this machine instead"))
    if ex["kind"] == "ray":
        alive = [n for n in ex["nodes"] if n["alive"]]
        gpus = sum(n["gpus"] for n in alive)
        lost = len(ex["nodes"]) - len(alive)
        rows.append(("cluster", f"Ray at {ex['address']}: {len(alive)} node(s) up"
                                + (f", {lost} gone" if lost else "") + f", {gpus} GPU(s)"))
    if ex["kind"] == "ray" or len(ex["workers"]) > 1:
        rows += [("worker", worker_line(w)) for w in ex["workers"]]
    return rows


def where(place: dict[str, Any]) -> str:
    """A worker or a job's placement in words: ``ray-1a2b3c4d-cpu0 on node 1a2b3c4d
    (10.0.0.5), actor 0f1e2d3c4b5a, pid 4242`` or ``local-0, pid 4242``."""
    parts = [str(place.get("worker") or place.get("name") or place.get("executor"))]
    if place.get("executor") == "ray":
        parts[0] += f" on node {str(place['node'])[:8]} ({place['node_ip']})"
        if place.get("actor"):
            parts.append(f"actor {str(place['actor'])[:12]}")
    if place.get("pid"):
        parts.append(f"pid {place['pid']}")
    if place.get("device"):
        parts.append(str(place["device"]))
    return ", ".join(parts)


def worker_line(w: dict[str, Any]) -> str:
    """One worker of ``timbrectl status``: where, whether it runs, what it holds warm."""
    if w["down"]:
        state = f"down: {w['down']}"
    elif w["jobs"]:
        state = "running " + ", ".join(w["jobs"])
    else:
        state = "idle" if w["alive"] else "not started"
    models = ", ".join(w["models"]) or "nothing warm"
    return f"{where(w)}: {state}; {models}"


def progress_bar(step: int, total: int, eta_s: float | None, width: int = 30) -> str:
    """``[#########.........]  45%  226/503  ETA 12s`` (no newline)."""
    frac = 0.0 if total <= 0 else min(1.0, step / total)
    filled = int(frac * width)
    eta = "" if eta_s is None else f"  ETA {duration(eta_s)}"
    return f"[{'#' * filled}{'.' * (width - filled)}] {frac * 100:3.0f}%  {step}/{total}{eta}"


def one_line(text: str, width: int = 40) -> str:
    """``text`` on one row: line breaks and tabs as spaces, cut to ``width`` with an ellipsis."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[:width - 1] + "…"


def job_line(job: dict[str, Any]) -> str:
    """One row of ``timbrectl jobs list``."""
    prompt = one_line(job["params"].get("prompt", ""))
    if job["params"].get("kind") == "stems":
        prompt = f"stems of {job['params'].get('take')}: {prompt}"
    dur = job["params"].get("duration")
    dur_s = f"{dur:g}s" if isinstance(dur, int | float) else "-"
    return f"{job['id']:<14} {job['state']:<11} {job['model'][:22]:<22} {dur_s:>6}  {prompt}"


def job_detail(job: dict[str, Any]) -> str:
    """``timbrectl jobs show``."""
    p = job["params"]
    pending = job["cancel_requested"] and job["state"] not in ("cancelled", "done", "failed")

    def pairs(values: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v}" for k, v in values.items() if v is not None)

    # Nested groups (the export settings, a backend's own options) get a row each, written
    # as key=value like the rest rather than as a Python dict.
    nested = [(k, v) for k, v in p.items() if isinstance(v, dict)]
    rows = [
        ("state", job["state"] + (" (cancel requested)" if pending else "")),
        ("model", job["model"]),
        ("prompt", p.get("prompt", "")),
        ("params", pairs({k: v for k, v in p.items()
                          if k != "prompt" and not isinstance(v, dict)})),
        *((k, pairs(v) or "none") for k, v in nested),
        ("priority", str(job["priority"])),
        ("attempts", str(job["attempts"]) + (f" (retry of {job['retry_of']})"
                                             if job["retry_of"] else "")),
    ]
    if job["progress"]:
        rows.append(("progress", f"{job['progress']['step']}/{job['progress']['total']}"))
    if job["error"]:
        rows.append(("error", job["error"]["message"]))
    if job.get("timings"):
        t = job["timings"]
        rows.append(("time", f"load {t['load_s']:.2f}s, decode {t['decode_s']:.2f}s, "
                             f"export {t['export_s']:.2f}s, other {t['other_s']:.3f}s"))
    place = job.get("placement") or {}
    if place.get("executor"):
        rows.append(("ran on", where(place)))
    for lost in place.get("interruptions") or []:
        rows.append(("lost", f"{where(lost)} while {lost['state']}: "
                             f"{lost['error']['message']}"))
    rows += [("output", path) for path in job["outputs"]]
    return "\n".join([job["id"], *(f"  {k:<9} {v}" for k, v in rows)])


def model_rows(installed: list[dict[str, Any]],
               catalogue: list[dict[str, Any]] | None = None) -> str:
    """``timbrectl models list``: the installed models, then the catalogue's others."""
    if installed:
        lines = [f"{'NAME':<28} {'SIZE':>10}  {'REVISION':<12} LOADED"]
        for m in installed:
            rev = (m.get("revision") or "-")[:12]
            lines.append(f"{m['name'][:28]:<28} {size(m['size_bytes']):>10}  {rev:<12} "
                         f"{'yes' if m.get('loaded') else ''}")
    else:
        lines = ["no models installed"]
    have = {m["name"] for m in installed}
    available = [c for c in catalogue or [] if c["name"] not in have]
    if available:
        lines += ["", "available (timbrectl models pull NAME):",
                  f"{'NAME':<28} {'SIZE':>10}  {'REPOSITORY':<38} {'KIND':<14} LICENCE"]
        for c in available:
            kind = ("stems (takes stems)" if c.get("task") == "separate"
                    else ", ".join(k for k in ("melody", "stereo") if c.get(k)) or "text")
            licence = c.get("licence", "")
            if c.get("gated"):
                licence += " (gated: accept it on the Hub, then a token)"
            lines.append(f"{c['name'][:28]:<28} {'~' + size(c['approx_bytes']):>10}  "
                         f"{c['repo'][:38]:<38} {kind:<14} {licence}".rstrip())
    return "\n".join(lines)


def backend_rows(backends: list[dict[str, Any]]) -> str:
    """``timbrectl backends``: each family, what it can do, and its parameters."""
    blocks = []
    for b in backends:
        caps = b["capabilities"]
        rates = "/".join(f"{r / 1000:g} kHz" for r in caps["sample_rates"])
        channels = "/".join({1: "mono", 2: "stereo"}.get(c, f"{c} ch") for c in caps["channels"])
        lines = [f"{b['name']}: {b['summary']}",
                 f"  {rates}, {channels}, up to {caps['max_native_duration_s']:g} s a pass; "
                 f"{', '.join(caps['features']) or 'no extras'}; needs "
                 f"{', '.join(n.replace('_', ' ') for n in b['needs']) or 'nothing'}"]
        props = b["params"]["properties"]
        if props:
            lines.append("  parameters (--param NAME=VALUE):")
        width = max((len(name) for name in props), default=0)
        for name, prop in props.items():
            facts = []
            if "minimum" in prop and "maximum" in prop:
                facts.append(f"{prop['minimum']:g} to {prop['maximum']:g}")
            if "enum" in prop:
                facts.append(" | ".join(str(v) for v in prop["enum"]))
            if "default" in prop:
                default = prop["default"]
                facts.append(f"default {default:g}" if isinstance(default, int | float)
                             and not isinstance(default, bool) else f"default {default!r}")
            text = prop.get("description", "").rstrip(".")
            lines.append(f"    {name:<{width}}  {', '.join(facts)}: {text}" if facts
                         else f"    {name:<{width}}  {text}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) or "no backends"


def preset_detail(preset: dict[str, Any]) -> str:
    """``timbrectl presets show``."""
    def table(values: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v}" for k, v in values.items()) or "none"

    rows = [
        ("about", preset["description"] or "-"),
        ("source", f"{preset['source']} ({preset['path']})"),
        ("prompt", f"{preset['prompt_prefix']!r} + your prompt + {preset['prompt_suffix']!r}"),
        ("params", table(preset["params"])),
        ("export", table(preset["export"])),
    ]
    return "\n".join([preset["name"], *(f"  {k:<7} {v}" for k, v in rows)])


def ps_rows(loaded: list[dict[str, Any]], now: float) -> str:
    """``timbrectl models ps``."""
    if not loaded:
        return "no models loaded"
    lines = [f"{'NAME':<28} {'DEVICE':<8} {'DTYPE':<9} {'MEMORY':>10}  UNTIL"]
    for m in loaded:
        if m["in_use"]:
            until = "in use"
        elif m["expires_at"] is None:
            until = "forever"
        else:
            until = f"{duration(max(0.0, m['expires_at'] - now))} from now"
        lines.append(f"{m['model'][:28]:<28} {m['device']:<8} {m['dtype']:<9} "
                     f"{size(m['memory_bytes']):>10}  {until}")
    return "\n".join(lines)


def parse_when(text: str) -> float:
    """``2026-11-23``, ``2026-11-23T18:30`` (local time) or ``3h``/``2d``/``1w`` ago."""
    import datetime as dt
    import re
    import time

    m = re.fullmatch(r"(\d+)\s*([mhdw])", text.strip())
    if m:
        unit = {"m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return time.time() - int(m.group(1)) * unit
    try:
        return dt.datetime.fromisoformat(text).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD[THH:MM]) or an age like 3h, "
                         "2d, 1w") from None


def take_line(take: dict[str, Any]) -> str:
    """One row of ``timbrectl history``."""
    import datetime as dt

    when = dt.datetime.fromtimestamp(take["created_at"]).strftime("%Y-%m-%d %H:%M")
    rating = {"up": "+", "down": "-"}.get(take["rating"] or "", " ")
    prompt = one_line(take["prompt"])
    gone = " (deleted)" if take["deleted_at"] else ""
    return (f"{take['id']:<13} {when} {rating} {take['duration_s']:5.1f}s "
            f"{take['format']:<4} {prompt}{gone}")


def take_detail(take: dict[str, Any]) -> str:
    """``timbrectl takes show``."""
    loud = take["loudness_after_lufs"]
    rows = [
        ("path", take["path"] + (" (deleted)" if take["deleted_at"] else "")),
        ("prompt", take["prompt"]),
        ("session", take["session"]),
        ("job", f"{take['job_id']} (take {take['take_index']})"),
        ("audio", f"{take['format']}, {take['sample_rate']} Hz, {take['channels']} ch, "
                  f"{take['duration_s']:.2f} s" + ("" if loud is None else
                                                   f", {loud:.1f} LUFS")),
        ("seed", str(take["recipe"].get("params", {}).get("seed", "?"))),
        ("model", str(take["recipe"].get("model", "?"))),
        ("rating", (take["rating"] or "none") + (f" — {take['note']}" if take["note"] else "")),
        ("tags", ", ".join(take["tags"]) or "none"),
    ]
    if take.get("bpm") is not None:
        rows.insert(5, ("tempo", f"{take['bpm']:.1f} BPM" + (f", {take['key']}"
                                                             if take.get("key") else "")))
    for stem in take.get("stems") or ():
        rows.append(("stem", f"{stem['stem']}: {stem['path']} ({stem['model']})"
                     + (" (deleted)" if stem.get("deleted_at") else "")))
    return "\n".join([take["id"], *(f"  {k:<8} {v}" for k, v in rows)])


def auth_rows(rows: list[dict[str, Any]], backend: str, available: bool) -> str:
    """``timbrectl auth list``: each provider, its variable and where its key is found
    (never the key)."""
    lines = [f"{'PROVIDER':<12} {'ENV VAR':<22} KEY"]
    for r in rows:
        lines.append(f"{r['provider']:<12} {r['env_var']:<22} {r['key'] or 'none'}")
    lines.append(f"keyring: {backend}" if available else
                 f"keyring: none usable here ({backend}); set the variables in timbred's "
                 "environment instead")
    return "\n".join(lines)


def money(usd: float, *, estimate: bool = False) -> str:
    """``$1.25``, ``<$0.01``; ``~$1.25`` for an estimate."""
    text = f"${usd:.2f}" if usd == 0 or usd >= 0.005 else "<$0.01"
    return ("~" + text) if estimate else text


def costs_table(summary: dict[str, Any]) -> str:
    """``timbrectl costs``: each provider's jobs and spend since ``since``, this month's spend
    against its monthly budget, and the total."""
    import datetime as dt

    def day(ts: float) -> str:
        return dt.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")

    head = f"hosted spend since {day(summary['since'])}"
    providers = summary["providers"]
    if not providers:
        return f"{head}: no hosted jobs"
    lines = [head, f"{'PROVIDER':<12} {'JOBS':>5} {'SPENT':>10}  {'THIS MONTH':>10}  BUDGET"]
    for p in providers:
        budget = p["monthly_budget"]
        if budget is None:
            of_budget = "none"
        else:
            share = f" ({p['month_usd'] / budget:.0%})" if budget > 0 else ""
            of_budget = money(budget) + share
        lines.append(f"{p['provider']:<12} {p['jobs']:>5} "
                     f"{money(p['usd'], estimate=p['estimated']):>10}  "
                     f"{money(p['month_usd']):>10}  {of_budget}")
    estimated = any(p["estimated"] for p in providers)
    jobs = sum(p["jobs"] for p in providers)
    lines.append(f"{'total':<12} {jobs:>5} "
                 f"{money(summary['total_usd'], estimate=estimated):>10}")
    lines.append(f"this month from {day(summary['month_start'])}")
    if estimated:
        lines.append("~ estimate: worked out from the published price, not the provider's "
                     "own figure")
    return "\n".join(lines)


def hosted_rows(hosted: list[dict[str, Any]], sent: frozenset[str] = frozenset()) -> str:
    """The ``Hosted`` section of ``timbrectl models list``: each hosted model, where the
    daemon finds its provider's key (``sent``: the providers whose key timbrectl sends from its
    own environment), what it is and its price."""
    if not hosted:
        return ""
    lines = ["Hosted (runs at the provider, for a fee; timbrectl generate -m NAME):",
             f"{'NAME':<30} {'KEY':<12} {'ABOUT':<40} PRICE"]
    for m in hosted:
        if not m["needs_key"]:
            key = m["key"]
        elif m["provider"] in sent:
            key = "sent"
        else:
            key = "needs a key"
        lines.append(f"{m['name'][:30]:<30} {key:<12} {one_line(m['summary']):<40} "
                     f"{one_line(m['price'], 80)}")
    needing = sorted({m["provider"] for m in hosted if m["needs_key"]} - sent)
    if needing:
        lines.append("needs a key: " + "; ".join(f"timbrectl auth set {p}" for p in needing))
    if any(m["needs_key"] and m["provider"] in sent for m in hosted):
        lines.append("sent: timbrectl sends the key in its own environment with each job")
    return "\n".join(lines)
