"""Object storage: a local directory by default, any S3-compatible endpoint otherwise.

Keys are relative, `/`-separated paths such as `fixtures/tpch/sf1/lineitem/part-0.parquet`.
Both implementations validate every key the same way, so no name taken from a plan or a fixture
id can reach outside the storage's root or prefix.
"""

import builtins
import os
import re
import shutil
import tempfile
import urllib.parse
import urllib.request
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, NoReturn, cast

from crucible_dagster.errors import StorageError

if TYPE_CHECKING:
    from crucible_dagster.settings import Settings

# Files above this size go up in parts; each part is this big.
MULTIPART_THRESHOLD_BYTES = 8 * 1024 * 1024
MULTIPART_CHUNK_BYTES = 8 * 1024 * 1024
_COPY_BUFFER_BYTES = 1024 * 1024

_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")
_BUCKET_NAME = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
# Temporary files of LocalStorage carry this prefix; listings never show them.
_TMP_PREFIX = ".crucible-tmp-"


@dataclass(frozen=True)
class ObjectInfo:
    """One stored object as a listing shows it."""

    key: str
    size: int
    etag: str
    last_modified: datetime


@dataclass(frozen=True)
class UploadedPart:
    """One part of an unfinished multipart upload, as the server lists it."""

    number: int
    size: int
    etag: str


def validate_key(key: str) -> str:
    """Returns `key` if it is a safe relative object key; raises StorageError otherwise."""
    problem = _key_problem(key)
    if problem:
        raise StorageError(f"invalid object key {key!r}: {problem}")
    return key


def _key_problem(key: str) -> str | None:
    if not key:
        return "it is empty"
    if _CONTROL_CHARS.search(key):
        return "it contains a control character"
    if "\\" in key:
        return "it contains a backslash; use '/' between segments"
    if key.startswith("/"):
        return "it starts with '/'; keys are relative"
    for segment in key.split("/"):
        if segment == "":
            return "it has an empty segment ('//' or a trailing '/')"
        if segment in (".", ".."):
            return f"it has a {segment!r} segment"
    return None


def validate_prefix(prefix: str) -> str:
    """A listing prefix: empty, a key, a key ending in `/`, or the start of a segment."""
    if prefix == "":
        return prefix
    body = prefix[:-1] if prefix.endswith("/") else prefix
    problem = _key_problem(body)
    if problem:
        raise StorageError(f"invalid object prefix {prefix!r}: {problem}")
    return prefix


class Storage(ABC):
    """Where plans, workloads, fixtures and results are kept."""

    @abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Stores `data` under `key`, replacing any earlier object."""

    @abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Uploads a local file without reading it into memory (in parts when it is large)."""

    @abstractmethod
    def get_bytes(self, key: str) -> bytes:
        """The whole object; for small objects only."""

    @abstractmethod
    def download_file(self, key: str, path: Path) -> None:
        """Writes the object to `path` in bounded memory; `path` appears only when complete."""

    @abstractmethod
    def open_read(self, key: str) -> BinaryIO:
        """A stream of the object's bytes; close it when done."""

    @abstractmethod
    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes `start` to `end` (exclusive) of the object, fewer at its end; for readers that
        seek, such as Parquet's."""

    @abstractmethod
    def size(self, key: str) -> int:
        """The object's length in bytes."""

    @abstractmethod
    def exists(self, key: str) -> bool: ...

    @abstractmethod
    def list(self, prefix: str = "") -> list[ObjectInfo]:
        """Every object whose key starts with `prefix`, sorted by key."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Removes the object; deleting a missing object is not an error."""

    @abstractmethod
    def uri(self, key: str) -> str:
        """Where the object (or a prefix ending in `/`) lives: `file:///...`, `s3://bucket/...`."""

    @abstractmethod
    def describe(self) -> str:
        """A short description for messages; it never includes credentials."""


class LocalStorage(Storage):
    """Objects as files under a root directory; writes are atomic (temporary file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def _path(self, key: str) -> Path:
        path = self.root / validate_key(key)
        # A symlink inside the root could still point outside it.
        if not path.resolve().is_relative_to(self.root):
            raise StorageError(f"object key {key!r} resolves outside {self.describe()}")
        return path

    def _existing(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise StorageError(f"object {key!r} not found in {self.describe()}")
        return path

    def put_bytes(self, key: str, data: bytes) -> None:
        with _AtomicFile(self._path(key)) as out:
            out.write(data)

    def put_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        if not Path(path).is_file():
            raise StorageError(f"cannot store {path} as {key!r}: no such file")
        with Path(path).open("rb") as source, _AtomicFile(target) as out:
            shutil.copyfileobj(source, out, _COPY_BUFFER_BYTES)

    def get_bytes(self, key: str) -> bytes:
        return self._existing(key).read_bytes()

    def download_file(self, key: str, path: Path) -> None:
        source = self._existing(key)
        with source.open("rb") as src, _AtomicFile(Path(path)) as out:
            shutil.copyfileobj(src, out, _COPY_BUFFER_BYTES)

    def open_read(self, key: str) -> BinaryIO:
        return self._existing(key).open("rb")

    def read_range(self, key: str, start: int, end: int) -> bytes:
        with self._existing(key).open("rb") as source:
            source.seek(start)
            return source.read(max(end - start, 0))

    def size(self, key: str) -> int:
        return self._existing(key).stat().st_size

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        validate_prefix(prefix)
        # Walk only the deepest folder the prefix names, then filter by the full prefix.
        folder = self.root / prefix.rpartition("/")[0] if "/" in prefix else self.root
        if not folder.is_dir() or not folder.resolve().is_relative_to(self.root):
            return []
        found: list[ObjectInfo] = []
        for dirpath, _dirnames, filenames in os.walk(folder):
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                path = Path(dirpath) / name
                key = path.relative_to(self.root).as_posix()
                if not key.startswith(prefix):
                    continue
                stat = path.stat()
                found.append(
                    ObjectInfo(
                        key=key,
                        size=stat.st_size,
                        # A cheap change marker, not a content hash: size and modification time.
                        etag=f"{stat.st_mtime_ns:x}-{stat.st_size:x}",
                        last_modified=datetime.fromtimestamp(stat.st_mtime, UTC),
                    )
                )
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        # Empty folders left behind would otherwise accumulate forever.
        parent = path.parent
        while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def uri(self, key: str) -> str:
        if key.endswith("/"):
            return self._path(key[:-1]).as_uri() + "/"
        return self._path(key).as_uri()

    def describe(self) -> str:
        return f"local storage {self.root}"


class _AtomicFile:
    """A temporary file next to `path` that replaces `path` only when closed without error."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> BinaryIO:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.path.parent)
        except OSError as exc:
            raise StorageError(f"cannot write {self.path}: {exc}") from exc
        self.tmp = Path(tmp)
        self.file = os.fdopen(fd, "wb")
        return cast(BinaryIO, self.file)

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.file.close()
        if exc_type is not None:
            self.tmp.unlink(missing_ok=True)
            return
        try:
            os.replace(self.tmp, self.path)
        except OSError as error:
            self.tmp.unlink(missing_ok=True)
            raise StorageError(f"cannot write {self.path}: {error}") from error


class S3Storage(Storage):
    """Objects in an S3 bucket under an optional prefix; any S3-compatible endpoint works."""

    # `put_file` uploads large files in parts through boto3. The multipart methods below, with
    # presigned part URLs, serve uploads that send the bytes with another HTTP client.

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key: str | None = None,
        secret_key: str | None = None,
    ) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        if not _BUCKET_NAME.match(bucket):
            raise StorageError(
                f"invalid S3 bucket name {bucket!r}: expected 3-63 lowercase letters, digits, "
                "'.' or '-'"
            )
        prefix = prefix.strip("/")
        if prefix:
            validate_key(prefix)
        self.bucket = bucket
        self.prefix = prefix + "/" if prefix else ""
        self.endpoint_url = endpoint_url or None
        self.region = region
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        )
        # Without explicit keys boto3's default chain applies (environment, profile, role).
        self._client = boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=region,
            aws_access_key_id=access_key or None,
            aws_secret_access_key=secret_key or None,
            config=config,
        )
        self._transfer = TransferConfig(
            multipart_threshold=MULTIPART_THRESHOLD_BYTES,
            multipart_chunksize=MULTIPART_CHUNK_BYTES,
            max_concurrency=4,
        )

    def _full(self, key: str) -> str:
        return self.prefix + validate_key(key)

    def ensure_bucket(self) -> None:
        """Creates the bucket if it does not exist yet; nothing else creates it."""
        from botocore.exceptions import ClientError

        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in ("404", "NoSuchBucket", "NotFound"):
                self._fail(exc, "checking the bucket")
        except Exception as exc:
            self._fail(exc, "checking the bucket")
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1" and self.endpoint_url is None:
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except Exception as exc:
            if _error_code(exc) not in ("BucketAlreadyOwnedByYou",):
                self._fail(exc, "creating the bucket")

    def put_bytes(self, key: str, data: bytes) -> None:
        full = self._full(key)
        try:
            self._client.put_object(Bucket=self.bucket, Key=full, Body=data)
        except Exception as exc:
            self._fail(exc, f"writing {key!r}")

    def put_file(self, key: str, path: Path) -> None:
        full = self._full(key)
        if not Path(path).is_file():
            raise StorageError(f"cannot store {path} as {key!r}: no such file")
        try:
            self._client.upload_file(str(path), self.bucket, full, Config=self._transfer)
        except Exception as exc:
            self._fail(_unwrap_transfer(exc), f"uploading {key!r}")

    def get_bytes(self, key: str) -> bytes:
        with self.open_read(key) as body:
            return body.read()

    def download_file(self, key: str, path: Path) -> None:
        full = self._full(key)
        target = Path(path)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=target.parent)
        except OSError as exc:
            raise StorageError(f"cannot write {target}: {exc}") from exc
        os.close(fd)
        try:
            self._client.download_file(self.bucket, full, tmp, Config=self._transfer)
            os.replace(tmp, target)
        except Exception as exc:
            Path(tmp).unlink(missing_ok=True)
            self._fail(_unwrap_transfer(exc), f"reading {key!r}")

    def open_read(self, key: str) -> BinaryIO:
        full = self._full(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            self._fail(exc, f"reading {key!r}")
        return cast(BinaryIO, response["Body"])

    def read_range(self, key: str, start: int, end: int) -> bytes:
        if end <= start:
            return b""
        full = self._full(key)
        try:
            response = self._client.get_object(
                Bucket=self.bucket, Key=full, Range=f"bytes={start}-{end - 1}"
            )
            return cast(bytes, response["Body"].read())
        except Exception as exc:
            self._fail(exc, f"reading {key!r}")

    def size(self, key: str) -> int:
        full = self._full(key)
        try:
            return int(self._client.head_object(Bucket=self.bucket, Key=full)["ContentLength"])
        except Exception as exc:
            self._fail(exc, f"reading {key!r}")

    def exists(self, key: str) -> bool:
        full = self._full(key)
        try:
            self._client.head_object(Bucket=self.bucket, Key=full)
            return True
        except Exception as exc:
            if _error_code(exc) in ("404", "NoSuchKey", "NotFound"):
                return False
            self._fail(exc, f"checking {key!r}")

    def list(self, prefix: str = "") -> list[ObjectInfo]:
        validate_prefix(prefix)
        found: list[ObjectInfo] = []
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=self.prefix + prefix
            )
            for page in pages:
                for item in page.get("Contents", []):
                    found.append(
                        ObjectInfo(
                            key=item["Key"][len(self.prefix) :],
                            size=int(item["Size"]),
                            etag=item.get("ETag", "").strip('"'),
                            last_modified=item["LastModified"].astimezone(UTC),
                        )
                    )
        except Exception as exc:
            self._fail(exc, f"listing {prefix!r}")
        return sorted(found, key=lambda info: info.key)

    def delete(self, key: str) -> None:
        full = self._full(key)
        try:
            self._client.delete_object(Bucket=self.bucket, Key=full)
        except Exception as exc:
            if _error_code(exc) not in ("404", "NoSuchKey", "NotFound"):
                self._fail(exc, f"deleting {key!r}")

    def create_multipart_upload(self, key: str) -> str:
        """Starts a multipart upload of `key` and returns its upload id."""
        full = self._full(key)
        try:
            response = self._client.create_multipart_upload(Bucket=self.bucket, Key=full)
        except Exception as exc:
            self._fail(exc, f"starting a multipart upload of {key!r}")
        return str(response["UploadId"])

    def presign_upload_part(
        self, key: str, upload_id: str, part_number: int, content_md5: str, expires_s: int = 3600
    ) -> str:
        """A URL that accepts one `PUT` of the part; the body must match `content_md5` (base64)."""
        params = {
            "Bucket": self.bucket,
            "Key": self._full(key),
            "UploadId": upload_id,
            "PartNumber": part_number,
            "ContentMD5": content_md5,
        }
        return self._presign("upload_part", params, expires_s, key)

    def presign_put(self, key: str, content_md5: str, expires_s: int = 3600) -> str:
        """A URL that accepts one `PUT` of the whole object, checked against `content_md5`."""
        params = {"Bucket": self.bucket, "Key": self._full(key), "ContentMD5": content_md5}
        return self._presign("put_object", params, expires_s, key)

    def _presign(self, method: str, params: dict[str, Any], expires_s: int, key: str) -> str:
        try:
            return str(
                self._client.generate_presigned_url(method, Params=params, ExpiresIn=expires_s)
            )
        except Exception as exc:
            self._fail(exc, f"presigning {method} of {key!r}")

    def list_parts(self, key: str, upload_id: str) -> builtins.list[UploadedPart] | None:
        """The parts uploaded so far, or None when the server knows no such upload for `key`."""
        full = self._full(key)
        parts: list[UploadedPart] = []
        try:
            pages = self._client.get_paginator("list_parts").paginate(
                Bucket=self.bucket, Key=full, UploadId=upload_id
            )
            for page in pages:
                for item in page.get("Parts", []):
                    parts.append(
                        UploadedPart(
                            number=int(item["PartNumber"]),
                            size=int(item["Size"]),
                            etag=item.get("ETag", "").strip('"'),
                        )
                    )
        except Exception as exc:
            if _error_code(exc) in ("NoSuchUpload", "404", "NotFound"):
                return None
            self._fail(exc, f"listing the uploaded parts of {key!r}")
        return sorted(parts, key=lambda part: part.number)

    def complete_multipart_upload(
        self, key: str, upload_id: str, parts: Sequence[tuple[int, str]]
    ) -> str:
        """Joins the parts, given as (part number, ETag) in ascending order, into the object,
        and returns the object's ETag."""
        full = self._full(key)
        listing: builtins.list[Any] = [
            {"PartNumber": number, "ETag": f'"{etag}"'} for number, etag in parts
        ]
        try:
            response = self._client.complete_multipart_upload(
                Bucket=self.bucket,
                Key=full,
                UploadId=upload_id,
                MultipartUpload={"Parts": listing},
            )
        except Exception as exc:
            self._fail(exc, f"completing the multipart upload of {key!r}")
        return str(response.get("ETag", "")).strip('"')

    def abort_multipart_upload(self, key: str, upload_id: str) -> None:
        """Discards an unfinished upload and its parts; an unknown upload is not an error."""
        full = self._full(key)
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=full, UploadId=upload_id)
        except Exception as exc:
            if _error_code(exc) not in ("NoSuchUpload", "404", "NotFound"):
                self._fail(exc, f"aborting the multipart upload of {key!r}")

    def uri(self, key: str) -> str:
        name = validate_prefix(key) if key.endswith("/") else validate_key(key)
        return f"s3://{self.bucket}/{self.prefix}{name}"

    def describe(self) -> str:
        where = self.endpoint_url or f"AWS {self.region}"
        return f"S3 storage s3://{self.bucket}/{self.prefix} at {where}"

    def _fail(self, exc: BaseException, action: str) -> NoReturn:
        raise StorageError(f"{action} in {self.describe()} failed: {_explain(exc)}") from None


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str(response.get("Error", {}).get("Code", ""))
    return ""


def _unwrap_transfer(exc: BaseException) -> BaseException:
    # The transfer manager wraps client errors; the cause says what the server answered.
    cause = exc.__cause__ or exc.__context__
    if _error_code(exc) == "" and cause is not None and _error_code(cause):
        return cause
    return exc


_REFUSED_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "403",
    "InvalidToken",
    "ExpiredToken",
}


def _explain(exc: BaseException) -> str:
    """A message about what went wrong that is safe to show (botocore never echoes secrets)."""
    from botocore.exceptions import (
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        ReadTimeoutError,
    )
    from botocore.exceptions import (
        ConnectionError as BotoConnectionError,
    )

    code = _error_code(exc)
    if code in ("404", "NoSuchKey", "NotFound"):
        return "object not found"
    if code == "NoSuchBucket":
        return "the bucket does not exist"
    if code in _REFUSED_CODES:
        return f"the credentials were refused ({code})"
    if isinstance(exc, ClientError):
        message = exc.response.get("Error", {}).get("Message", "")
        return f"{code}: {message}".rstrip(": ")
    if isinstance(exc, NoCredentialsError):
        return "no credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    if isinstance(exc, EndpointConnectionError | BotoConnectionError | ReadTimeoutError):
        return f"the endpoint is unreachable ({type(exc).__name__})"
    return f"{type(exc).__name__}: {exc}"


def storage_from_url(url: str, settings: "Settings | None" = None) -> Storage:
    """`file:///abs/path` or a plain path → LocalStorage; `s3://bucket/prefix` → S3Storage.

    For S3 the endpoint, region and credentials come from the settings.
    """
    if url.startswith("s3://"):
        from crucible_dagster.settings import get_settings

        settings = settings or get_settings()
        parsed = urllib.parse.urlsplit(url)
        secret = settings.aws_secret_access_key
        return S3Storage(
            bucket=parsed.netloc,
            prefix=parsed.path.strip("/"),
            endpoint_url=settings.s3_endpoint_url,
            region=settings.aws_region,
            access_key=settings.aws_access_key_id,
            secret_key=secret.get_secret_value() if secret is not None else None,
        )
    if url.startswith("file://"):
        parsed = urllib.parse.urlsplit(url)
        if parsed.netloc not in ("", "localhost"):
            raise StorageError(f"storage URL {url!r}: only local file:// URLs are supported")
        return LocalStorage(Path(urllib.request.url2pathname(parsed.path)))
    if "://" in url:
        raise StorageError(
            f"storage URL {url!r}: expected file:///path, s3://bucket/prefix or a local path"
        )
    if not url:
        raise StorageError("storage URL is empty: expected file:///path or s3://bucket/prefix")
    return LocalStorage(Path(url))


def get_storage() -> Storage:
    """The storage named by the settings (`CRUCIBLE_STORAGE_URL`)."""
    from crucible_dagster.settings import get_settings

    settings = get_settings()
    return storage_from_url(settings.storage_url, settings)
