"""The one storage layer: every data path (landing, lake, models, reports) is a local path or an object-store URI.

Schemes:

* a plain path or ``file://...``: the local file system (or a shared mount every Spark worker sees).
* ``s3://bucket/prefix``: S3 or an S3-compatible endpoint, through ``pyarrow.fs.S3FileSystem`` here and
  delta-rs's own S3 client for Delta tables.
* ``s3a://bucket/prefix`` is accepted as the same object as ``s3://bucket/prefix`` (the name Hadoop's S3A
  connector uses, so a URI copied from a Spark job works). Spark itself never opens an s3 URI in coldstart:
  the pyspark package ships no ``hadoop-aws`` jar, so executors read and write objects through this module
  in their Python workers, and no Hadoop S3 configuration is needed or read.

Credentials and endpoint come only from the standard AWS environment variables, read when a URI is opened:
``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_SESSION_TOKEN``, ``AWS_REGION`` (or ``AWS_DEFAULT_REGION``) and ``AWS_ALLOW_HTTP=true`` for a
plain-http endpoint. They are passed on to delta-rs as its storage options and never written anywhere.

Atomic publication: a local :func:`write_bytes` writes a temporary file and renames it; an S3 PUT is
atomic by itself (a reader sees the old object or the new one, never part of one). Nothing here renames
on S3.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from dataclasses import dataclass
from typing import Iterator

import pyarrow.fs as pafs

REMOTE_SCHEMES = ("s3://", "s3a://")
# Standard AWS variables handed on to delta-rs and to Spark executors (never stored).
AWS_ENV = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
           "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ALLOW_HTTP")


class StorageError(RuntimeError):
    """A store cannot be used (unreachable endpoint, rejected credentials, missing bucket, unknown scheme);
    the message names the URI and the setting to fix."""


def is_remote(uri: str) -> bool:
    """True for an object-store URI (``s3://``, ``s3a://``), False for a local path or ``file://``."""
    return str(uri).startswith(REMOTE_SCHEMES)


def normalize(uri: str) -> str:
    """The canonical form of a location: ``s3://bucket/key`` (``s3a://`` rewritten) or an absolute local path."""
    uri = str(uri)
    if uri.startswith("s3a://"):
        uri = "s3://" + uri[len("s3a://"):]
    if uri.startswith("s3://"):
        return uri.rstrip("/") if uri.count("/") > 2 else uri
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        raise StorageError(f"{uri}: unsupported scheme (use a local path, s3:// or s3a://)")
    return os.path.abspath(os.path.expanduser(uri))


def join(uri: str, *parts: str) -> str:
    """``uri`` with path parts appended by ``/`` (works for both schemes)."""
    base = str(uri).rstrip("/")
    rest = "/".join(str(p).strip("/") for p in parts if str(p))
    return f"{base}/{rest}" if rest else base


def bucket_of(uri: str) -> str:
    return normalize(uri)[len("s3://"):].split("/", 1)[0]


def _env(name: str, *fallbacks: str) -> str | None:
    for key in (name, *fallbacks):
        value = os.environ.get(key)
        if value:
            return value
    return None


def _allow_http() -> bool:
    return (os.environ.get("AWS_ALLOW_HTTP") or "").strip().lower() in ("1", "true", "yes")


def storage_options(uri: str) -> dict[str, str] | None:
    """delta-rs storage options for ``uri`` from the AWS environment (None for a local path).

    Retries are bounded so that an unreachable endpoint fails within seconds instead of delta-rs's default
    minutes of backoff; a commit conflict is not a retried request and is unaffected."""
    if not is_remote(uri):
        return None
    options = {"max_retries": "2", "retry_timeout": "20s", "timeout": "60s", "connect_timeout": "5s"}
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        if os.environ.get(key):
            options[key] = os.environ[key]
    region = _env("AWS_REGION", "AWS_DEFAULT_REGION")
    if region:
        options["AWS_REGION"] = region
    endpoint = _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    if endpoint:
        options["AWS_ENDPOINT_URL"] = endpoint
    if _allow_http():
        options["AWS_ALLOW_HTTP"] = "true"
    return options


_FS_CACHE: dict[tuple, pafs.FileSystem] = {}


def _s3_filesystem() -> pafs.S3FileSystem:
    endpoint = _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
    key = (endpoint, _env("AWS_ACCESS_KEY_ID"), _env("AWS_SECRET_ACCESS_KEY"), _env("AWS_SESSION_TOKEN"),
           _env("AWS_REGION", "AWS_DEFAULT_REGION"), _allow_http())
    fs = _FS_CACHE.get(key)
    if fs is None:
        kwargs = dict(access_key=key[1], secret_key=key[2], session_token=key[3], region=key[4] or "us-east-1",
                      connect_timeout=5, request_timeout=60,
                      retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=3))
        if endpoint:
            scheme, _, host = endpoint.partition("://")
            if not host:
                scheme, host = "https", endpoint
            kwargs.update(endpoint_override=host.rstrip("/"), scheme=scheme)
        fs = pafs.S3FileSystem(**kwargs)
        _FS_CACHE[key] = fs
    return fs


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow file system of ``uri`` and the path inside it (``bucket/key`` on S3)."""
    uri = normalize(uri)
    if is_remote(uri):
        return _s3_filesystem(), uri[len("s3://"):]
    return pafs.LocalFileSystem(), uri


def _wrap(uri: str, setting: str | None, exc: Exception) -> StorageError:
    return StorageError(describe_failure(uri, setting, exc))


def describe_failure(uri: str, setting: str | None, exc: BaseException) -> str:
    """One line naming the URI, the setting that holds it, and which AWS variable to check."""
    text = str(exc)
    where = f"{setting}={uri}" if setting else uri
    low = text.lower()
    endpoint = _env("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL") or "the default AWS endpoint"
    if is_remote(uri):
        if any(s in low for s in ("network_connection", "connection refused", "couldn't connect", "curl error",
                                  "connect error", "timed out", "dns", "error sending request", "unreachable")):
            return f"{where}: cannot reach the S3 endpoint {endpoint} (check AWS_ENDPOINT_URL and AWS_ALLOW_HTTP): {text}"
        if any(s in low for s in ("invalidaccesskeyid", "signaturedoesnotmatch", "access denied", "accessdenied", "access_denied",
                                  "forbidden", "403", "credentials")):
            return (f"{where}: the S3 endpoint {endpoint} rejected the credentials "
                    f"(check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY): {text}")
        if "nosuchbucket" in low or "bucket does not exist" in low or "no such bucket" in low:
            return f"{where}: bucket {bucket_of(uri)!r} does not exist on {endpoint} (create it, or fix {setting or 'the URI'})"
    return f"{where}: {text}"


def check(uri: str, setting: str | None = None) -> None:
    """Fail fast, before anything is written, when ``uri``'s store cannot be used: an S3 URI needs a
    reachable endpoint, accepted credentials and an existing bucket. Local paths always pass (folders
    are created on write). Raises :class:`StorageError` naming the URI and ``setting``."""
    uri = normalize(uri)
    if not is_remote(uri):
        return
    fs, _ = filesystem(uri)
    bucket = bucket_of(uri)
    try:
        info = fs.get_file_info(bucket)
        if info.type == pafs.FileType.NotFound:
            raise StorageError(f"{setting + '=' if setting else ''}{uri}: bucket {bucket!r} does not exist on "
                               f"{_env('AWS_ENDPOINT_URL_S3', 'AWS_ENDPOINT_URL') or 'the default AWS endpoint'} "
                               f"(create it, or fix {setting or 'the URI'})")
        # A HEAD on the bucket can pass with bad credentials on some stores: one list proves access.
        fs.get_file_info(pafs.FileSelector(bucket, recursive=False, allow_not_found=True))
    except StorageError:
        raise
    except (OSError, ValueError) as exc:
        raise _wrap(uri, setting, exc) from None


# --- files ------------------------------------------------------------------------------------
def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def is_file(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type == pafs.FileType.File


def is_dir(uri: str) -> bool:
    """A folder (locally) or a prefix with at least one object under it (S3 has no empty folders)."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        return True
    return False


@dataclass(frozen=True)
class Entry:
    uri: str
    name: str
    size: int
    is_file: bool


def list_dir(uri: str) -> list[Entry]:
    """Direct children of a folder or prefix, sorted by name; a missing one lists as empty."""
    uri = normalize(uri)
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
    out = [Entry(join(uri, i.base_name), i.base_name, i.size or 0, i.type == pafs.FileType.File) for i in infos]
    return sorted(out, key=lambda e: e.name)


def walk_files(uri: str) -> list[str]:
    """Every file under ``uri`` (recursive), as URIs, sorted."""
    uri = normalize(uri)
    fs, path = filesystem(uri)
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    prefix = path.rstrip("/") + "/"
    return sorted(join(uri, i.path[len(prefix):]) for i in infos if i.type == pafs.FileType.File)


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as fh:
        return fh.read()


def open_input(uri: str):
    """A seekable binary file for reading (random access: Parquet footers, line readers)."""
    fs, path = filesystem(uri)
    return fs.open_input_file(path)


def open_output(uri: str):
    """A binary output stream; on S3 the object appears whole when the stream closes (multipart upload),
    locally the file is written in place (use :func:`write_bytes` for an atomic small file)."""
    fs, path = filesystem(uri)
    if not is_remote(uri):
        fs.create_dir(posixpath.dirname(path), recursive=True)
    return fs.open_output_stream(path)


def write_bytes(uri: str, data: bytes, exclusive: bool = False) -> None:
    """Write a whole object atomically: a reader sees the old content or the new, never a part.

    ``exclusive``: raise FileExistsError instead of replacing an existing object (locally atomic through a
    hard link; on S3 a check before the put, as pyarrow has no conditional put)."""
    fs, path = filesystem(uri)
    if is_remote(uri):
        if exclusive and exists(uri):
            raise FileExistsError(uri)
        with fs.open_output_stream(path) as fh:
            fh.write(data)
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex}"
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())  # the rename must not publish a file whose bytes are still in flight
        if exclusive:
            os.link(tmp, path)  # fails with FileExistsError when the name is taken, atomically
            os.remove(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def touch(uri: str) -> None:
    """An empty marker object (e.g. ``_SUCCESS``)."""
    write_bytes(uri, b"")


def makedirs(uri: str) -> None:
    """Create a local folder (and parents); nothing to do on S3, where prefixes exist through their objects."""
    if not is_remote(uri):
        os.makedirs(normalize(uri), exist_ok=True)


def delete(uri: str) -> None:
    """Delete a file, or a folder/prefix and everything under it; a missing one is not an error."""
    fs, path = filesystem(uri)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        fs.delete_file(path)
        return
    if is_remote(uri):
        # A prefix is no directory object on S3: delete the objects under it.
        for child in walk_files(uri):
            fs.delete_file(filesystem(child)[1])
        return
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)


def size(uri: str) -> int:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).size or 0


def copy_file(src: str, dst: str) -> None:
    """Copy one file (any scheme to any scheme), streamed."""
    sfs, spath = filesystem(src)
    with sfs.open_input_stream(spath) as fin, open_output(dst) as fout:
        while chunk := fin.read(8 << 20):
            fout.write(chunk)


def copy_tree(src: str, dst: str) -> list[str]:
    """Copy every file under ``src`` to the same relative path under ``dst`` (any scheme to any scheme)."""
    src, dst = normalize(src), normalize(dst)
    copied = []
    for uri in walk_files(src):
        target = join(dst, uri[len(src):].lstrip("/"))
        copy_file(uri, target)
        copied.append(target)
    return copied


def iter_lines(uri: str) -> Iterator[bytes]:
    """The lines of a text object (with their line endings), streamed."""
    with open_lines(uri) as fh:
        yield from fh


@contextlib.contextmanager
def open_lines(uri: str):
    """A binary file to iterate line by line: the builtin file locally (C-speed line splitting), a buffered
    line splitter over the object's stream on S3."""
    if not is_remote(uri):
        with open(normalize(uri), "rb") as fh:
            yield fh
        return
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as raw:
        yield _Lines(raw)


class _Lines:
    def __init__(self, raw, size: int = 1 << 20):
        self.raw, self.size = raw, size

    def __iter__(self) -> Iterator[bytes]:
        rest = b""
        while True:
            chunk = self.raw.read(self.size)
            if not chunk:
                break
            lines = (rest + chunk).split(b"\n")
            rest = lines.pop()
            for line in lines:
                yield line + b"\n"
        if rest:
            yield rest


def local_path(uri: str) -> str:
    """The local path of a local URI; a remote URI raises (callers that need a real path, e.g. a temp dir)."""
    if is_remote(uri):
        raise StorageError(f"{uri}: a local path is required here")
    return normalize(uri)


def worker_env() -> dict[str, str]:
    """The AWS variables of this process, to ship in a Spark task's closure: executors (on a cluster, or a
    local JVM started before the variables were set) do not see the driver's environment. Pass the result
    to :func:`adopt` first thing in the task; it is sent with the task, never stored."""
    return {k: os.environ[k] for k in AWS_ENV if os.environ.get(k)}


def adopt(env: dict[str, str]) -> None:
    """In an executor's Python worker: use the driver's AWS variables (see :func:`worker_env`)."""
    for key in AWS_ENV:
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)
