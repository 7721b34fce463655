"""The job queue and its scheduler: the durable SQLite job store and its transitions
(``jobs``), the generation service that validates requests, schedules and batches jobs and
turns their output into takes (``generation``), model residency (``residency``: load,
keep-alive, eviction, memory budget) and streaming preview files (``preview``)."""
