"""Chat rows from zips of JSONL (the OpenAI persona-features release): AES or ZipCrypto, the password
from the user or ``$EMKIT_ZIP_PASSWORD``; entry names that would escape the archive's folder are refused.

Rows are read as :func:`emkit.data.formats.rows_from_lines` reads a JSONL file, and bad entries
(wrong password, corrupt data) are counted like bad rows (:class:`emkit.data.formats.BadRows`).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from emkit.data.formats import BadRows, rows_from_lines
from emkit.data.lines import text_lines
from emkit.data.schema import ChatRow
from emkit.errors import EmkitError

PASSWORD_ENV = "EMKIT_ZIP_PASSWORD"


def check_member_name(name: str, where: str) -> None:
    """Refuse an entry that would land outside its folder if extracted (``../``, absolute, drive)."""
    norm = name.replace("\\", "/")
    parts = PurePosixPath(norm).parts
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in parts:
        raise EmkitError(f"{where}: zip entry {name!r} would escape its folder", hint="this archive is unsafe")


def _password_bytes(password: str | bytes | None) -> bytes | None:
    if password is None:
        password = os.environ.get(PASSWORD_ENV) or None
    if password is None:
        return None
    return password.encode("utf-8") if isinstance(password, str) else password


def _bad_zip_errors() -> tuple[type[Exception], ...]:
    try:
        import pyzipper
    except ImportError:
        return (zipfile.BadZipFile,)
    return (zipfile.BadZipFile, pyzipper.BadZipFile)


def _open_zip(path: Path) -> zipfile.ZipFile:
    try:
        import pyzipper
    except ImportError:  # plain ZipCrypto still works with the standard library
        return zipfile.ZipFile(path)
    return pyzipper.AESZipFile(path)


def _member_lines(zf: zipfile.ZipFile, info: zipfile.ZipInfo, pwd: bytes | None, where: str) -> Iterator[str]:
    if info.flag_bits & 0x1 and pwd is None:
        raise EmkitError(f"{where} is password-protected", hint=f"pass the password (--password or ${PASSWORD_ENV})")
    try:
        with zf.open(info, pwd=pwd) as raw:
            for _, line in text_lines(raw, where):
                yield line
    except RuntimeError as e:
        msg = str(e).lower()
        if "password" in msg:
            raise EmkitError(f"{where}: wrong zip password", hint="check the password given in the release's README") from None
        raise EmkitError(f"{where}: cannot read ({e})") from None
    except (*_bad_zip_errors(), zlib.error, UnicodeDecodeError) as e:
        hint = "a wrong password can also cause this" if info.flag_bits & 0x1 else None
        raise EmkitError(f"{where}: corrupt or unreadable entry ({e})", hint=hint) from None


def zip_members(path: str | Path, skip_bad: bool = False) -> list[zipfile.ZipInfo]:
    """The JSONL entries of a zip, after refusing names that would escape the archive's folder."""
    p = Path(path)
    try:
        zf = _open_zip(p)
    except (*_bad_zip_errors(), OSError) as e:
        raise EmkitError(f"{p}: not a readable zip file ({e})") from None
    with zf:
        infos = zf.infolist()
    bad = BadRows(str(p), skip_bad)
    out = []
    for info in infos:
        try:
            check_member_name(info.filename, str(p))
        except EmkitError as e:
            bad.add(e)
            continue
        if not info.is_dir() and info.filename.endswith(".jsonl") and not info.filename.startswith("__MACOSX/"):
            out.append(info)
    bad.finish(len(infos))
    return out


def read_zip(
    path: str | Path, password: str | bytes | None = None, skip_bad: bool = False, member: str | None = None
) -> list[ChatRow]:
    """Chat rows from every ``.jsonl`` entry of a zip (or just ``member``); AES or ZipCrypto.

    ``password`` falls back to ``$EMKIT_ZIP_PASSWORD``. Rows keep their ``canary`` in the metadata,
    plus ``source_member`` naming the entry they came from.
    """
    p = Path(path)
    if not p.is_file():
        raise EmkitError(f"no such file: {p}")
    infos = zip_members(p, skip_bad)
    if member is not None:
        infos = [i for i in infos if i.filename == member or PurePosixPath(i.filename).name == member]
        if not infos:
            raise EmkitError(f"{p}: no JSONL entry named {member!r}")
    if not infos:
        raise EmkitError(f"{p}: no .jsonl entries in the archive")
    pwd = _password_bytes(password)
    rows: list[ChatRow] = []
    bad = BadRows(str(p), skip_bad)
    with _open_zip(p) as zf:
        for info in infos:
            where = f"{p}!{info.filename}"
            try:
                got = rows_from_lines(_member_lines(zf, info, pwd, where), where, skip_bad)
            except EmkitError as e:  # wrong password, corrupt entry: the whole entry is bad
                bad.add(e)
                continue
            for r in got:
                r.metadata.setdefault("source_member", info.filename)
            rows.extend(got)
    bad.finish(len(infos))
    if not rows:
        raise EmkitError(f"{p}: no readable rows", hint="; ".join(bad.problems[:2]) or None)
    return rows
