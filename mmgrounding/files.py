"""File helpers shared by the writers of manifests, checkpoints and shards."""

from __future__ import annotations

import os


def use_default_permissions(path: str | os.PathLike) -> None:
    """Give a file from `tempfile.mkstemp` the mode a plain `open` would give.

    mkstemp creates files readable by their owner only (0600). A manifest or a
    checkpoint renamed from such a file would then be unreadable to the other
    users of a shared dataset folder.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)
