"""Test doubles shipped in the package (as httpcore ships its mock transport).

Import the submodules directly: :mod:`timbred.testing.daemon` (an in-process daemon),
:mod:`timbred.testing.failpoints` (crash points for crash-consistency tests) and
:mod:`timbred.testing.tiny_musicgen` (a tiny random-weight MusicGen checkpoint; it imports
torch, so this package imports nothing eagerly).
"""
