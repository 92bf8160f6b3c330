"""Stream an uploaded file to disk: the raw body, or the ``file`` field of a multipart form.

The file is written under the given directory with a generated name only (nothing from the
request, not even a multipart ``filename``, reaches the path), counted against a size limit
as it arrives, and removed again when anything goes wrong.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header

from api.errors import ApiError

#: The multipart field that carries the file.
FILE_FIELD = "file"


def _too_big(limit: int) -> ApiError:
    return ApiError(413, "too_big", f"upload above {limit} bytes", details={"max_bytes": limit})


class _FormFile:
    """Collect the ``file`` part of a multipart body into an open binary file."""

    def __init__(self, out: Any) -> None:
        self.out = out
        self.found = False
        self._writing = False
        self._field, self._value = b"", b""
        self._headers: dict[bytes, bytes] = {}

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._add("_field", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._data,
            "on_part_end": self._part_end,
        }

    def _add(self, name: str, data: bytes) -> None:
        setattr(self, name, getattr(self, name) + data)

    def _part_begin(self) -> None:
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._field.strip().lower()] = self._value.strip()
        self._field, self._value = b"", b""

    def _headers_finished(self) -> None:
        _, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        self._writing = not self.found and params.get(b"name") == FILE_FIELD.encode()

    def _data(self, data: bytes, start: int, end: int) -> None:
        if self._writing:
            self.out.write(data[start:end])

    def _part_end(self) -> None:
        if self._writing:
            self.found, self._writing = True, False


async def save_upload(request: Request, directory: str | os.PathLike[str], *,
                      max_bytes: int, prefix: str = "upload-") -> tuple[Path, int]:
    """Write the request's file to a new, uniquely named file in ``directory``.

    ``multipart/form-data`` bodies give their ``file`` field; any other body is the file.

    Returns
    -------
    (path, size_bytes) of the written file (the file's bytes, not the form's).

    Raises
    ------
    ApiError
        413 ``too_big`` above ``max_bytes`` of body; 400 ``bad_request`` for a malformed
        form; 422 ``invalid_value`` for an empty file or a form without ``file``.
    """
    kind, params = parse_options_header(request.headers.get("content-type", ""))
    multipart = kind == b"multipart/form-data"
    if multipart and not params.get(b"boundary"):
        raise ApiError(400, "bad_request", "multipart/form-data body without a boundary")
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".upload", dir=directory)
    path = Path(name)
    received = 0
    try:
        with os.fdopen(fd, "wb") as out:
            form = _FormFile(out) if multipart else None
            parser = MultipartParser(params[b"boundary"], form.callbacks()) if form else None
            async for chunk in request.stream():
                received += len(chunk)
                if received > max_bytes:
                    raise _too_big(max_bytes)
                if parser is None:
                    out.write(chunk)
                else:
                    parser.write(chunk)
            if parser is not None:
                parser.finalize()
                if not form.found:  # type: ignore[union-attr]
                    raise ApiError(422, "invalid_value",
                                   f"multipart body has no complete `{FILE_FIELD}` field")
            size = out.tell()
        if size == 0:
            raise ApiError(422, "invalid_value", "the uploaded file is empty")
    except MultipartParseError as err:
        path.unlink(missing_ok=True)
        raise ApiError(400, "bad_request", f"malformed multipart body: {err}") from err
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path, size
