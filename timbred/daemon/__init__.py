"""The daemon's infrastructure: the command line (``cli``), the daemon as a library function
(``app``), the socket transport (``server``), the runtime directory and socket path
(``runtime``), service-manager notifications (``notify``), logging (``logs``), the event bus
(``events``), ids (``ids``) and the SQLite helpers every store shares (``sqlite_store``).

What the daemon does with all of it lives beside this package: the job queue and scheduler
(:mod:`timbred.queue`), takes (:mod:`timbred.takes`), the watch folder (:mod:`timbred.watch`),
models, backends (:mod:`timbred.backends`) and executors (:mod:`timbred.executors`).
"""
