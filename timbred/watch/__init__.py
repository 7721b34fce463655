"""The watch folder: drop a prompt file into a folder, get a take.

* :mod:`~timbred.watch.service`: :class:`~timbred.watch.service.WatchService`, the folders'
  tasks and each file's way from claim to result, exactly once (the rules are its docstring).
* :mod:`~timbred.watch.files`: what it does with directory entries (which names it takes,
  when a file is complete, reading it safely, moving it into ``done/`` or ``rejected/``).
* :mod:`~timbred.watch.store`: the claims, added folders and counters in ``timbre.sqlite3``.
* :mod:`~timbred.watch.promptfile`: prompt files' bytes to requests, or one exact error.
* :mod:`~timbred.watch.daemon`: the service wired to the daemon's folders, configuration,
  presets and generation service.
"""
