"""The studio's themes: one ``Style`` of ``class:`` names per theme."""

from __future__ import annotations

from prompt_toolkit.styles import Style

_DEFAULT: dict[str, str] = {
    "status-bar": "bg:#262a33 #c8ccd4",
    "status-bar.connected": "bg:#262a33 #7ec699 bold",
    "status-bar.connecting": "bg:#262a33 #e5c07b",
    "status-bar.disconnected": "bg:#5c2026 #ffffff bold",
    "status-bar.key": "bg:#262a33 #9fb4d8",
    "status-bar.dim": "bg:#262a33 #7f8591",
    "status-bar.audio-off": "bg:#262a33 #e5c07b",
    "status-bar.hosted": "bg:#262a33 #c678dd",
    "status-bar.warning": "bg:#262a33 #e5c07b",
    "separator": "#3e4451",
    "title": "#9fb4d8 bold",
    "timeline.prompt": "#e6e6e6 bold",
    "timeline.marker": "#7ec699 bold",
    "timeline.meta": "#7f8591",
    "timeline.hint": "#7f8591 italic",
    "timeline.failed": "#e06c75",
    "timeline.cancelled": "#e5c07b",
    "timeline.state": "#9fb4d8",
    "take": "#c8ccd4",
    "take.selected": "bg:#2f3542",
    "take.playing": "#7ec699 bold",
    "take.meta": "#7f8591",
    "waveform": "#61afef",
    "waveform.played": "#7ec699",
    "waveform.playhead": "reverse bold",
    "progress.bar": "#7ec699",
    "progress.empty": "#3e4451",
    "progress.text": "#c8ccd4",
    "composer": "",
    "composer.prompt": "#7ec699 bold",
    "composer.frame": "#3e4451",
    "panel.label": "#7f8591",
    "panel.value": "#e6e6e6",
    "panel.selected": "bg:#2f3542 bold",
    "panel.focused": "bg:#3b4252 #ffffff bold",
    "panel.note": "#7f8591 italic",
    "panel.warning": "#e5c07b",
    "summary": "#7f8591",
    "message.info": "#9fb4d8",
    "message.error": "#ffffff bg:#8b2c35 bold",
    "message.hint": "#5c6370",
    "palette": "bg:#1e2128 #c8ccd4",
    "palette.selected": "bg:#3b4252 #ffffff bold",
    "palette.key": "#9fb4d8",
    "palette.filter": "bg:#262a33 #ffffff",
    "frame.border": "#5c6370",
    "frame.label": "#9fb4d8 bold",
    "library.search": "bg:#262a33",
    "lyrics.section": "#c678dd",
    "lyrics.warning": "#e5c07b",
    "completion-menu": "bg:#262a33 #c8ccd4",
    "completion-menu.completion.current": "bg:#3b4252 #ffffff bold",
    "completion-menu.meta.completion": "bg:#1e2128 #7f8591",
    "completion-menu.meta.completion.current": "bg:#3b4252 #c8ccd4",
    "scrollbar.background": "bg:#262a33",
    "scrollbar.button": "bg:#5c6370",
}

_HIGH_CONTRAST: dict[str, str] = {
    "status-bar": "bg:#ffffff #000000 bold",
    "status-bar.connected": "bg:#ffffff #005f00 bold",
    "status-bar.connecting": "bg:#ffff00 #000000 bold",
    "status-bar.disconnected": "bg:#ff0000 #ffffff bold",
    "status-bar.key": "bg:#ffffff #00005f bold underline",
    "status-bar.dim": "bg:#ffffff #000000",
    "status-bar.audio-off": "bg:#ffff00 #000000 bold",
    "status-bar.hosted": "bg:#ffffff #5f005f bold",
    "status-bar.warning": "bg:#ffff00 #000000 bold",
    "separator": "#ffffff",
    "title": "#ffff00 bold underline",
    "timeline.prompt": "#ffffff bold",
    "timeline.marker": "#ffff00 bold",
    "timeline.meta": "#ffffff",
    "timeline.hint": "#ffffff",
    "timeline.failed": "#ff5f5f bold",
    "timeline.cancelled": "#ffff00 bold",
    "timeline.state": "#00ffff bold",
    "take": "#ffffff",
    "take.selected": "reverse",
    "take.playing": "#ffff00 bold",
    "take.meta": "#ffffff",
    "waveform": "#00ffff",
    "waveform.played": "#ffff00 bold",
    "waveform.playhead": "bg:#ffffff #000000 bold",
    "progress.bar": "#ffff00 bold",
    "progress.empty": "#808080",
    "progress.text": "#ffffff bold",
    "composer": "#ffffff",
    "composer.prompt": "#ffff00 bold",
    "composer.frame": "#ffffff",
    "panel.label": "#ffffff",
    "panel.value": "#ffffff bold",
    "panel.selected": "reverse",
    "panel.focused": "bg:#ffff00 #000000 bold",
    "panel.note": "#ffffff",
    "panel.warning": "#ffff00 bold",
    "summary": "#ffffff",
    "message.info": "#00ffff bold",
    "message.error": "bg:#ff0000 #ffffff bold",
    "message.hint": "#ffffff",
    "palette": "bg:#000000 #ffffff",
    "palette.selected": "bg:#ffff00 #000000 bold",
    "palette.key": "#00ffff bold",
    "palette.filter": "bg:#000000 #ffffff bold underline",
    "frame.border": "#ffffff bold",
    "frame.label": "#ffff00 bold",
    "library.search": "bg:#000000 #ffffff underline",
    "lyrics.section": "#ff87ff bold",
    "lyrics.warning": "#ffff00 bold",
    "completion-menu": "bg:#000000 #ffffff",
    "completion-menu.completion.current": "bg:#ffff00 #000000 bold",
    "completion-menu.meta.completion": "bg:#000000 #ffffff",
    "completion-menu.meta.completion.current": "bg:#ffff00 #000000",
    "scrollbar.background": "bg:#000000",
    "scrollbar.button": "bg:#ffffff",
}

THEMES: dict[str, dict[str, str]] = {"default": _DEFAULT, "high-contrast": _HIGH_CONTRAST}


class UnknownTheme(ValueError):
    """Raised when a theme name (from ``--theme`` or ``[theme] name``) is not one we ship."""

    def __init__(self, name: str) -> None:
        super().__init__(f"unknown theme {name!r} (themes: {', '.join(THEMES)})")
        self.name = name


def build_style(name: str = "default") -> Style:
    """The ``Style`` for theme ``name``; :class:`UnknownTheme` when there is no such theme."""
    try:
        rules = THEMES[name]
    except KeyError:
        raise UnknownTheme(name) from None
    return Style.from_dict(rules)
