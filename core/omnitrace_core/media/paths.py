"""Which local files a chat message may make the model read: none, unless the application says so.

A LangChain content block or a LlamaIndex ``ImageBlock`` / ``AudioBlock`` / ``VideoBlock`` /
``DocumentBlock`` can name a file on this machine (a ``path`` or a ``file://`` URL). Those
blocks usually come from an application's *users*: if the adapters opened whatever they
named, any user could make the model read (and answer questions about) any file the process
can open, and probe which files exist from the error messages. So local paths in messages
are refused by default, and allowed only through a :class:`LocalMediaPolicy`:

- ``media_root``: a folder; a path is read only if it resolves (symlinks and ``..``
  followed, relative paths taken from the folder) to a file inside it;
- ``allowed_paths``: explicit files that may be read (each resolved once, up front).

A refusal never says whether the path exists outside the allowed places: the message is the
same for ``/etc/passwd`` and for ``/no/such/file``. Inside ``media_root`` a missing file is
named (the application chose to expose that folder).

Sources the application builds itself (``MediaSource(path=...)``, the ``sources=`` keyword, a
retriever's nodes) are trusted and not checked here.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from omnitrace_core.errors import MediaAccessError, MediaError

#: Longest path string considered (longer ones are refused before touching the file system).
MAX_PATH_CHARS = 4096

#: How to allow local files, for error messages.
ALLOW_HINT = (
    "local files in messages are refused by default (a user message could otherwise make the model "
    "read any file on this machine). To allow them, give the chat model media_root='/folder/with/media' "
    "(paths must resolve inside it) or allowed_media_paths=[...], or send the file's bytes (base64) instead"
)


def _real(path: str) -> str:
    """``os.path.realpath`` that never raises (a symlink loop or a bad path gives the lexical path)."""
    try:
        return os.path.realpath(path)
    except (OSError, RuntimeError, ValueError):
        return os.path.abspath(path)


def _inside(path: str, root: str) -> bool:
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # different drives (Windows), or a relative / absolute mix
        return False


@dataclass(frozen=True)
class LocalMediaPolicy:
    """Where local media files named in messages may be read from (nowhere, by default).

    Attributes:
        media_root: A folder; paths must resolve to a file inside it (relative ones are taken
            from it).
        allowed_paths: Files that may be read wherever they are (resolved when the policy is made).
    """

    media_root: str | None = None
    allowed_paths: frozenset[str] = field(default_factory=frozenset)

    @classmethod
    def create(
        cls,
        media_root: str | os.PathLike[str] | None = None,
        allowed_paths: Iterable[str | os.PathLike[str]] | None = None,
    ) -> LocalMediaPolicy:
        """A policy from user-facing options (``media_root=``, ``allowed_media_paths=``).

        Raises:
            MediaAccessError: ``media_root`` is not an existing folder, or an allowed path is not a string.
        """
        root: str | None = None
        if media_root is not None:
            if isinstance(media_root, bytes) or not isinstance(media_root, (str, os.PathLike)):
                raise MediaAccessError(f"media_root={media_root!r}: must be a folder path (str or Path)")
            root = _real(os.fspath(media_root))
            if not os.path.isdir(root):
                raise MediaAccessError(f"media_root={os.fspath(media_root)!r}: not an existing folder")
        allowed: set[str] = set()
        if allowed_paths is not None:
            if isinstance(allowed_paths, (str, bytes, os.PathLike)):
                allowed_paths = [allowed_paths]
            for item in allowed_paths:
                if isinstance(item, bytes) or not isinstance(item, (str, os.PathLike)):
                    raise MediaAccessError(
                        f"allowed_media_paths item {item!r}: must be a file path (str or Path)"
                    )
                allowed.add(_real(os.fspath(item)))
        return cls(media_root=root, allowed_paths=frozenset(allowed))

    @property
    def allows_local_files(self) -> bool:
        return self.media_root is not None or bool(self.allowed_paths)

    def resolve(self, value: object, what: str) -> str:
        """The real path of an allowed local file named by a message.

        Args:
            value: The path as the message gave it (already unquoted from a ``file://`` URL).
            what: How the error names the block (``"image content block 'img1'"``).

        Raises:
            MediaAccessError: local files are not allowed, the path is malformed, or it resolves
                outside ``media_root`` and the allow-list (the message does not say whether it
                exists there).
            MediaError: it is inside ``media_root`` (or allowed) but missing, or not a file.
        """
        if not isinstance(value, str) or not value.strip():
            raise MediaAccessError(f"{what}: a local path must be a non-empty string, got {value!r}")
        shown = value if len(value) <= 200 else value[:197] + "..."
        if not self.allows_local_files:
            raise MediaAccessError(f"{what}: local path {shown!r} refused: {ALLOW_HINT}")
        if len(value) > MAX_PATH_CHARS or "\x00" in value:
            raise MediaAccessError(
                f"{what}: local path {shown!r} refused: malformed path (too long or a NUL byte)"
            )
        base = self.media_root or os.getcwd()
        candidate = value if os.path.isabs(value) else os.path.join(base, value)
        real = _real(candidate)
        in_root = self.media_root is not None and _inside(real, self.media_root)
        if not (in_root or real in self.allowed_paths):
            where = (
                f"outside media_root {self.media_root!r}" if self.media_root else "not in allowed_media_paths"
            )
            raise MediaAccessError(
                f"{what}: local path {shown!r} refused: it resolves {where} (symlinks and '..' are followed)"
            )
        try:
            is_file = Path(real).is_file()
            exists = is_file or Path(real).exists()
        except (OSError, ValueError):
            is_file = exists = False
        if not is_file:
            state = "is not a file" if exists else "not found"
            raise MediaError(f"{what}: file {shown!r} {state}")
        return real


#: The default: no local file named by a message is read.
NO_LOCAL_FILES = LocalMediaPolicy()
