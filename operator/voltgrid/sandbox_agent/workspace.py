"""Files confined to the sandbox's workspace, race-free against symlink tricks.

A path from a request is never joined to the workspace and handed to ``open``: a symlink planted by
the sandboxed code (``out -> /etc``) or swapped in between a check and the open would lead outside.
Instead every request path is split into plain components (``..``, ``.``, empty and NUL refused) and
walked from a descriptor of the workspace, one ``openat(O_NOFOLLOW | O_DIRECTORY)`` per directory and
``O_NOFOLLOW`` on the last one, so the kernel itself refuses any symlink on the way. Symlinks inside
the workspace therefore cannot be read or written through this API (the code in the sandbox can
still use them); they are listed and stat-ed as what they are.

Uploads go to a hidden temporary name in the target directory and are renamed over the target once
complete, so a reader never sees half a file and a broken upload leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Final, TypedDict

from voltgrid.sandbox_agent.errors import AgentError, bad_request, conflict, forbidden_path, not_found

MAX_PATH_CHARS: Final = 4096
MAX_COMPONENTS: Final = 256
"""Far beyond a real tree; bounds the descriptors one request opens."""
FILE_MODE: Final = 0o644
DIR_MODE: Final = 0o755
UPLOAD_PREFIX: Final = ".voltgrid-upload-"


class Entry(TypedDict):
    name: str
    path: str
    type: str
    size: int
    mode: str
    modified: float


def split(path: str) -> list[str]:
    """The plain components of a workspace-relative path; ``""`` and ``"/"`` are the workspace itself.

    A leading ``/`` means the workspace root, not the filesystem's: callers name files as the
    sandboxed code sees them relative to its working directory.
    """
    if len(path) > MAX_PATH_CHARS:
        raise bad_request(f"path is longer than {MAX_PATH_CHARS} characters")
    if "\x00" in path:
        raise bad_request("path contains a NUL byte")
    parts = [p for p in path.strip("/").split("/") if p != ""] if path.strip("/") else []
    for part in parts:
        if part in (".", ".."):
            raise forbidden_path(f"path {path!r} contains {part!r}; name files inside the workspace directly")
    if len(parts) > MAX_COMPONENTS:
        raise bad_request(f"path has more than {MAX_COMPONENTS} components")
    return parts


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def _entry(name: str, rel: str, st: os.stat_result) -> Entry:
    return {
        "name": name,
        "path": rel,
        "type": _kind(st.st_mode),
        "size": st.st_size,
        "mode": oct(stat.S_IMODE(st.st_mode)),
        "modified": st.st_mtime,
    }


def _os_error(exc: OSError, path: str) -> AgentError:
    if exc.errno == errno.ENOENT:
        return not_found(f"{path!r} does not exist in the workspace")
    if exc.errno in (errno.ELOOP, errno.EMLINK):
        return forbidden_path(f"{path!r} goes through a symlink; the files API does not follow symlinks")
    if exc.errno == errno.ENOTDIR:
        return AgentError(409, "not_a_directory", f"a component of {path!r} is not a directory (or is a symlink)")
    if exc.errno == errno.EISDIR:
        return AgentError(409, "is_a_directory", f"{path!r} is a directory")
    if exc.errno == errno.EEXIST:
        return conflict(f"{path!r} already exists")
    if exc.errno == errno.ENOTEMPTY:
        return conflict(f"{path!r} is a directory that is not empty; delete with recursive=true")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return AgentError(403, "permission_denied", f"{path!r}: permission denied")
    if exc.errno == errno.ENOSPC:
        return AgentError(507, "no_space", "the workspace is full")
    return AgentError(500, "io_error", f"{path!r}: {exc.strerror}")


@dataclass(frozen=True)
class Workspace:
    """The directory the sandbox's files API serves; every operation stays under ``root``."""

    root: str

    @contextmanager
    def _parent(self, parts: list[str], *, create: bool = False) -> Iterator[int]:
        """A descriptor of the directory holding ``parts[-1]`` (the root for a one-part path).

        With ``create``, missing directories on the way are made (``mkdir -p`` without following links).
        """
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)
        try:
            for part in parts[:-1]:
                if create:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, DIR_MODE, dir_fd=fd)
                try:
                    nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
                except NotADirectoryError:  # Linux answers ENOTDIR for a symlink here: name it as one
                    if stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode):
                        raise OSError(errno.ELOOP, "symlink") from None
                    raise
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    def stat(self, path: str) -> Entry:
        parts = split(path)
        try:
            if not parts:
                return _entry("", "", os.stat(self.root))
            with self._parent(parts) as parent:
                return _entry(parts[-1], "/".join(parts), os.stat(parts[-1], dir_fd=parent, follow_symlinks=False))
        except OSError as exc:
            raise _os_error(exc, path) from None

    def listdir(self, path: str) -> list[Entry]:
        parts = split(path)
        try:
            with self._parent([*parts, "."]) as fd:
                out = []
                with os.scandir(fd) as it:
                    for e in it:
                        if e.name.startswith(UPLOAD_PREFIX):
                            continue
                        out.append(_entry(e.name, "/".join([*parts, e.name]), e.stat(follow_symlinks=False)))
                return sorted(out, key=lambda x: x["name"])
        except OSError as exc:
            raise _os_error(exc, path) from None

    def mkdir(self, path: str) -> Entry:
        parts = split(path)
        if not parts:
            raise conflict("the workspace itself already exists")
        try:
            with self._parent([*parts, "."], create=True):
                pass
        except OSError as exc:
            raise _os_error(exc, path) from None
        return self.stat(path)

    def delete(self, path: str, *, recursive: bool) -> None:
        parts = split(path)
        if not parts:
            raise forbidden_path("the workspace itself cannot be deleted")
        try:
            with self._parent(parts) as parent:
                st = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
                if not stat.S_ISDIR(st.st_mode):
                    os.unlink(parts[-1], dir_fd=parent)
                elif recursive:
                    shutil.rmtree(parts[-1], dir_fd=parent)  # descriptor-based: never follows a link out
                else:
                    os.rmdir(parts[-1], dir_fd=parent)
        except OSError as exc:
            raise _os_error(exc, path) from None

    def open_read(self, path: str) -> tuple[int, int]:
        """A descriptor of a regular file and its size; the caller closes it."""
        parts = split(path)
        if not parts:
            raise AgentError(409, "is_a_directory", "the workspace root is a directory; list it instead")
        try:
            with self._parent(parts) as parent:
                fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=parent)
        except OSError as exc:
            raise _os_error(exc, path) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise AgentError(409, "not_a_file", f"{path!r} is a {_kind(st.st_mode)}, not a regular file")
        os.set_blocking(fd, True)
        return fd, st.st_size

    def open_write(self, path: str) -> Upload:
        """Start an upload to ``path`` (parents made as needed); commit it with :meth:`Upload.commit`."""
        parts = split(path)
        if not parts:
            raise AgentError(409, "is_a_directory", "the workspace root is a directory")
        try:
            with self._parent(parts, create=True) as parent:
                dir_fd = os.dup(parent)
        except OSError as exc:
            raise _os_error(exc, path) from None
        tmp = UPLOAD_PREFIX + secrets.token_hex(8)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE, dir_fd=dir_fd)
        except OSError as exc:
            os.close(dir_fd)
            raise _os_error(exc, path) from None
        return Upload(dir_fd=dir_fd, fd=fd, tmp=tmp, name=parts[-1], path=path)


@dataclass
class Upload:
    """A file being written under a temporary name in its target directory."""

    dir_fd: int
    fd: int
    tmp: str
    name: str
    path: str
    size: int = 0

    def write(self, chunk: bytes) -> None:
        view = memoryview(chunk)
        while view:
            n = os.write(self.fd, view)
            view = view[n:]
        self.size += len(chunk)

    def commit(self) -> None:
        """Put the file in place: ``rename`` replaces a file or a symlink itself, never its target."""
        try:
            os.close(self.fd)
            self.fd = -1
            try:
                mode = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False).st_mode
            except FileNotFoundError:
                mode = 0
            if stat.S_ISDIR(mode):
                raise AgentError(409, "is_a_directory", f"{self.path!r} is a directory")
            os.rename(self.tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError as exc:
            raise _os_error(exc, self.path) from None
        finally:
            self.abort()

    def abort(self) -> None:
        """Drop the temporary file (a no-op after a successful commit) and the descriptors."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.dir_fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.tmp, dir_fd=self.dir_fd)
            os.close(self.dir_fd)
            self.dir_fd = -1
