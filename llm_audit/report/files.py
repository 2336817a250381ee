"""Writing and reading the report files: a report folder replaced whole, under a lock, with CSV
cells that a spreadsheet cannot run; and `render_file`, which re-renders report.html from a
checked audit.json.

A report folder is written into a staging folder beside it and swapped in with one rename
(`renameat2(RENAME_EXCHANGE)` where the kernel has it), so a reader sees the old report or the new
one, never a mix of two runs, and no file of another run survives a rescan with fewer `--format`s.
Because the swap replaces the folder, a folder holding anything llm-audit did not write is refused
before the scan. A lock file beside the folder (`.NAME.lock`, holding the pid) keeps two runs from
writing one folder at once; the kernel drops it if the run dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import secrets
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from llm_audit.errors import ConfigError, LlmAuditError, OutputError, SourceNotFoundError
from llm_audit.journal import is_journal_name
from llm_audit.report.html import render_html
from llm_audit.report.validate import checked_audit
from llm_audit.untrusted import parse_json, read_bounded, show

if TYPE_CHECKING:  # pandas loads with the first table written, not with a scan
    import pandas as pd

MAX_AUDIT_BYTES = 1_000_000_000  # audit.json of a 10 000-layer model with trap entries: ~50 MB
# OWASP's CSV-injection rule: a text cell starting with one of these is prefixed with "'".
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def table_of(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows as a table whose integer columns stay integers (pandas' nullable Int64) where some
    rows have no value: a count never reads "384.0" in a CSV or a float in Parquet."""
    import pandas as pd

    frame = pd.DataFrame(rows)
    for column in frame.columns:
        values = [r[column] for r in rows if r.get(column) is not None]
        if values and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values
        ):
            frame[column] = frame[column].astype("Int64")
    return frame


def write_csv(table: pd.DataFrame, path: Path) -> None:
    """`table` as CSV, each text cell that a spreadsheet would run as a formula made inert.

    Lines end with CRLF (RFC 4180), so the writer quotes any cell holding a carriage return or a
    newline, which a name from a hostile header may, instead of letting it split the row.
    """
    import pandas as pd

    escaped = table.copy()
    for column in escaped.columns:
        if not pd.api.types.is_numeric_dtype(escaped[column]):  # object or str dtype
            escaped[column] = escaped[column].map(_inert)
    escaped.to_csv(path, index=False, lineterminator="\r\n")


def _inert(cell: Any) -> Any:
    return "'" + cell if isinstance(cell, str) and cell.startswith(_FORMULA_STARTS) else cell


# ---- the report folder ------------------------------------------------------------------------


def check_writable(folder: Path, *, within: Path | None = None, why: str = "") -> None:
    """Fail before a long run, not after it, when `folder` cannot be created or written: the
    nearest existing folder at or above `within` (default `folder`) must be a writable folder.
    Raises `OutputError`, with `why` added to the message."""
    existing = within if within is not None else folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(
            f"cannot create the folder ({existing} is not a folder)", path=str(folder)
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        reason = f"; {why}" if why else ""
        raise OutputError(
            f"cannot create the folder ({existing} is not writable){reason}", path=str(folder)
        )


def check_report_folder(folder: Path, names: frozenset[str]) -> None:
    """Fail before a long scan, not after it: `folder` must be creatable and replaceable, which
    needs a writable parent (the staging folder goes there), and may hold only report files
    (`names`) and resume journals. Raises `OutputError`."""
    if folder.name in ("", ".", ".."):  # the folder is renamed as a whole: it needs a name
        raise OutputError("is not a folder name; give --out a named folder", path=str(folder))
    check_writable(
        folder,
        within=folder.parent,
        why="the report is built beside the folder and swapped in; choose another --out",
    )
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        raise OutputError("is not a folder; choose another --out", path=str(folder))
    foreign = sorted(_foreign(folder, names)) if folder.is_dir() else []
    if foreign:
        raise OutputError(
            f"holds {show(foreign[0])}, which llm-audit did not write, and the report replaces "
            "the whole folder; choose an empty or new --out",
            path=str(folder),
        )


def _foreign(folder: Path, names: frozenset[str]) -> Iterator[str]:
    for entry in os.scandir(folder):
        ours = entry.name in names or is_journal_name(entry.name)
        if not ours or not entry.is_file(follow_symlinks=False):
            yield entry.name


def replace_folder(folder: Path, write: Callable[[Path], None], names: frozenset[str]) -> Path:
    """Run `write` into a staging folder beside `folder`, then swap it in for `folder` whole.

    A failure (disk full, no permission) raises `OutputError` and leaves `folder` as it was.
    """
    with report_lock(folder):
        check_report_folder(folder, names)
        try:
            staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.staging-", dir=folder.parent))
        except OSError as exc:
            raise OutputError(
                f"cannot create the folder ({exc.strerror})", path=str(folder)
            ) from None
        try:
            os.chmod(staging, _folder_mode(folder))
            write(staging)
            _swap_in(staging, folder)
        except LlmAuditError:
            raise
        except OSError as exc:
            raise OutputError(
                f"cannot write the report ({exc.strerror})", path=str(folder)
            ) from None
        finally:
            shutil.rmtree(staging, ignore_errors=True)  # after a swap: the previous report
    return folder


def _folder_mode(folder: Path) -> int:
    """The existing folder's permissions, else the umask's default (mkdtemp makes it 0700)."""
    if folder.is_dir():
        return folder.stat().st_mode & 0o7777
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask


def _swap_in(staging: Path, folder: Path) -> None:
    """Make `staging` the folder `folder`; afterwards `staging` holds what `folder` held."""
    if not folder.exists():
        os.rename(staging, folder)
        return
    if _exchange(staging, folder):
        return
    old = folder.with_name(f".{folder.name}.old-{secrets.token_hex(4)}")
    os.rename(folder, old)  # two renames: an instant with no folder, never a mix
    os.rename(staging, folder)
    os.rename(old, staging)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False if unavailable."""
    at_fdcwd, rename_exchange = -100, 2
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    done = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
    return done


_HELD: dict[Path, int] = {}  # lock path -> depth, so save() inside the CLI's lock is re-entrant


@contextlib.contextmanager
def report_lock(folder: Path) -> Iterator[None]:
    """Hold `.NAME.lock` beside `folder` for the block; `OutputError` naming the other run's pid
    when another process holds it. The kernel releases it if this process dies. Folders made to
    hold the lock are removed with it when the run leaves them empty (a failed scan writes nothing).
    """
    folder = folder.absolute()
    lock = folder.parent / f".{folder.name}.lock"
    if lock in _HELD:
        _HELD[lock] += 1
        try:
            yield
        finally:
            _HELD[lock] -= 1
        return
    made = [p for p in (folder.parent, *folder.parent.parents) if not p.exists()]
    fd = _acquire(lock, folder)
    _HELD[lock] = 1
    try:
        yield
    finally:
        del _HELD[lock]
        with contextlib.suppress(OSError):
            if _is_same_file(lock, fd):  # never another file put in its place
                lock.unlink()
        os.close(fd)
        for empty in made:  # deepest first
            with contextlib.suppress(OSError):
                empty.rmdir()


def _acquire(lock: Path, folder: Path) -> int:
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = _open_lock(lock, folder)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                other = os.read(fd, 32).decode(errors="replace").strip()
                os.close(fd)
                raise OutputError(
                    f"another llm-audit run (pid {other if other.isdigit() else '?'}) is "
                    "writing this report; "
                    "wait for it to finish or choose another --out",
                    path=str(folder),
                ) from None
            if _is_same_file(lock, fd):
                break
            os.close(fd)  # the holder removed the file as we opened it: lock the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd
    except OutputError:  # an OSError too: not to be wrapped again
        raise
    except OSError as exc:
        raise OutputError(
            f"cannot lock the report folder ({exc.strerror})", path=str(folder)
        ) from None


def _open_lock(lock: Path, folder: Path) -> int:
    """The lock file, opened without following a link: a link planted where the lock goes
    would have the pid written into (and the file created at) whatever it points to. The file
    must be a regular file with no other name (a hard link would be truncated); raises
    `OutputError` naming the lock otherwise."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(lock, flags, 0o644)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        raise OutputError(
            f"the lock file {lock.name} beside the report folder is a symbolic link, which is "
            "not followed; remove it or choose another --out",
            path=str(folder),
        ) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
        os.close(fd)
        raise OutputError(
            f"the lock file {lock.name} beside the report folder is not a plain file of its "
            "own (another name links to it, or it is not a regular file); remove it or choose "
            "another --out",
            path=str(folder),
        )
    return fd


def _is_same_file(path: Path, fd: int) -> bool:
    """Whether `path` (not followed) still names the file open as `fd`."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    held = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (held.st_dev, held.st_ino)


# ---- render ----------------------------------------------------------------------------------


def render_file(audit_json: str | Path, out: str | Path | None = None) -> Path:
    """Render `audit_json` (plus `spectra.npz` in the same folder) to `out`, by default
    `report.html` beside the JSON (an existing folder as `out`: `report.html` in it); returns the
    path written.

    Without spectra.npz the page has no ESD plots and says so. Raises `SourceNotFoundError` if the
    JSON is missing, `ConfigError` if it is not an audit.json of the supported schema_version (or
    spectra.npz is unreadable), `OutputError` if the page cannot be written.
    """
    audit_json = Path(audit_json)
    out = Path(out) if out is not None else audit_json.with_name("report.html")
    if out.is_dir():
        out = out / "report.html"
    audit = _read_audit(audit_json)
    spectra = _read_spectra(audit_json.with_name("spectra.npz"))
    page = render_html(audit, spectra)
    _write_atomic(out, page)
    return out


def _read_audit(path: Path) -> dict[str, Any]:
    """The checked audit in `path`; a file that is not an audit.json (not JSON at all, or a
    compare.json) is named for what it is."""
    fix = "pass the audit.json written by `llm-audit scan`"
    data = read_bounded(
        path, what="audit.json", fix=fix, limit=MAX_AUDIT_BYTES, missing=SourceNotFoundError
    )
    try:
        document = parse_json(data, what="audit.json", path=path, error=ConfigError)
    except ConfigError:
        if data.lstrip()[:1] in (b"{", b"["):  # JSON cut short or damaged: say what failed
            raise
        raise ConfigError(f"is not JSON, so not an audit.json; {fix}", path=str(path)) from None
    if isinstance(document, dict) and {"base", "others"} <= document.keys():
        raise ConfigError(
            "is a compare.json (written by `llm-audit compare`), not an audit.json: its page is "
            "the compare.html written beside it; rerun the same `llm-audit compare` to rebuild it",
            path=str(path),
        )
    try:
        return checked_audit(document)
    except ConfigError as exc:  # the same message, naming the file
        raise ConfigError(str(exc), path=str(path)) from None


def _read_spectra(path: Path) -> dict[str, dict[str, np.ndarray]] | None:
    """{layer name: {"evals": ..., "rand_evals": ...}} from spectra.npz, None if there is none.

    Sizes are bounded by the file, not by its claims: a member may inflate to at most
    `MAX_INFLATION` times its stored bytes, and must hold one float64 vector that fills it, both
    checked before anything is allocated (a 1 MB npz otherwise inflates to gigabytes).
    """
    if not path.is_file():
        return None
    spectra: dict[str, dict[str, np.ndarray]] = {}
    try:
        with zipfile.ZipFile(path) as npz:
            for info in npz.infolist():
                key = info.filename.removesuffix(".npy")
                name, _, kind = key.rpartition("/")
                spectra.setdefault(name, {})[kind] = _member(npz, info)
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise ConfigError(
            f"cannot read the spectra ({exc}); delete it to render without ESD plots, "
            "or scan again",
            path=str(path),
        ) from None
    return spectra


MAX_INFLATION = 64  # float64 eigenvalues deflate by less than 2x; a zip bomb by up to 1032x


def _member(npz: zipfile.ZipFile, info: zipfile.ZipInfo) -> np.ndarray:
    """One eigenvalue vector of spectra.npz, its sizes checked before it is inflated."""
    member = show(info.filename)
    if info.file_size > MAX_INFLATION * max(info.compress_size, 1024):
        raise ValueError(f"{member} claims {info.file_size} bytes from {info.compress_size}")
    with npz.open(info) as fh:
        major, _ = np.lib.format.read_magic(fh)
        read_header = (
            np.lib.format.read_array_header_1_0
            if major == 1
            else np.lib.format.read_array_header_2_0
        )
        shape, _, dtype = read_header(fh)
        if dtype != np.dtype("<f8") or len(shape) != 1 or shape[0] * 8 > info.file_size:
            raise ValueError(f"{member} is not a vector of float64 eigenvalues of its size")
        data = fh.read(shape[0] * 8)
    if len(data) != shape[0] * 8:
        raise ValueError(f"{member} is cut short")
    return np.frombuffer(data, dtype="<f8")


def _write_atomic(out: Path, text: str) -> None:
    # A fresh name opened with "x" (not mkstemp) so the page gets the usual umask permissions.
    tmp = out.with_name(f".{out.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"cannot write the report ({exc.strerror})", path=str(out)) from None
