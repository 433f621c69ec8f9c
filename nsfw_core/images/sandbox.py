"""The isolated decode lane: expensive decodes run in child processes, under a deadline.

A decoder cannot be interrupted in a thread: a hostile file that keeps libjpeg or
libtiff busy for a minute would hold a worker thread for that minute.  Decodes
whose declared cost is high (:attr:`nsfw_core.images.structure.Cost.inline` is False:
large or progressive images, every TIFF) therefore run in one of at most
``processes`` child processes (``python -m nsfw_core.images.sandbox``), which

* get ``timeout`` seconds per decode, after which the child is killed (SIGKILL),
  the caller gets :class:`~nsfw_core.base.errors.DecodeTimeout` (422) and a fresh
  child takes its place on the next call;
* may only grow their address space by what the image's declared cost allows
  (``RLIMIT_AS``): a decoder that allocates more than it declared gets
  ``MemoryError``, answered as :class:`~nsfw_core.base.errors.ImageTooLarge` (413);
* send back only the small result (the model input, or a bounded preview), framed
  as a JSON header plus raw array bytes: no pickle crosses the boundary, so a
  compromised decoder cannot run code in the server.

A video (:meth:`Sandbox.video`, :mod:`nsfw_core.images.video`) is one request and a stream of replies:
what its container declares and the frames planned, then each sampled frame's model input (and
thumbnail) as soon as it is decoded, then the end.  The child's memory limit is set from the declared
frame size once the container is open (a smaller one covers opening it); every reply must come within
the video's deadline, so a decoder that spins is killed like an image's.

Cheap decodes (the common case: ordinary JPEGs and PNGs) stay in the worker
threads, where they cost nothing extra.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import resource
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any, BinaryIO, Iterator

import numpy as np

from nsfw_core.base.errors import (
    DecodeTimeout,
    ImageTooLarge,
    NotAnImage,
    NSFWError,
    UndecodableImage,
    VideoTooLong,
)

_FRAME = struct.Struct("<II")  # header length, payload length
_MAX_HEADER = 1 << 16
_ERRORS: dict[str, type[NSFWError]] = {cls.__name__: cls for cls in (ImageTooLarge, NotAnImage, UndecodableImage,
                                                                      VideoTooLong)}
_DTYPES = {"float32": np.float32, "uint8": np.uint8}
# Address space a child may add on top of what it uses idle, per pixel of declared cost, and at
# least: decoding holds the decoder's buffers, Pillow's image (4 bytes a pixel) and the RGB array.
BYTES_PER_COST_PIXEL = 12
MIN_HEADROOM = 256 << 20
PREVIEW_SIDE = 2048  # largest side of the RGB array an isolated decode sends back


class Sandbox:
    """At most ``processes`` isolated decodes at once; each under ``timeout`` seconds."""

    def __init__(self, processes: int, timeout: float) -> None:
        self.processes = processes
        self.timeout = timeout
        self._slots = threading.BoundedSemaphore(processes)
        self._idle: list[_Child] = []
        self._lock = threading.Lock()
        self.killed = 0  # children killed at their deadline (for tests and /health)

    def prepare(self, data: bytes, *, size: int, limits: dict[str, Any], cost_pixels: int,
                frames: tuple[int, ...] | None = None) -> np.ndarray:
        """Decode and preprocess in a child: the (size, size, 3) float32 model input.

        With ``frames`` (an animation's frame indices, ascending): one input per frame, (k, size, size, 3).
        """
        request: dict[str, Any] = {"op": "prepare", "size": size, **limits}
        if frames is not None:
            request["frames"] = list(frames)
        out = self._call(request, data, cost_pixels)
        expected = (size, size, 3) if frames is None else (len(frames), size, size, 3)
        if out.shape != expected or out.dtype != np.float32:
            raise UndecodableImage("the isolated decoder sent back a malformed result")
        return out

    def thumbnails(self, data: bytes, *, side: int, frames: tuple[int, ...], limits: dict[str, Any],
                   cost_pixels: int) -> np.ndarray:
        """Frames of an animation as (k, side, side, 3) uint8 thumbnails, each fitted on white."""
        out = self._call({"op": "thumbnails", "side": side, "frames": list(frames), **limits}, data, cost_pixels)
        if out.shape != (len(frames), side, side, 3) or out.dtype != np.uint8:
            raise UndecodableImage("the isolated decoder sent back a malformed result")
        return out

    def decode(self, data: bytes, *, limits: dict[str, Any], cost_pixels: int) -> np.ndarray:
        """Decode in a child: an RGB uint8 array whose longer side is at most PREVIEW_SIDE."""
        out = self._call({"op": "decode", **limits}, data, cost_pixels)
        if out.ndim != 3 or out.shape[2] != 3 or out.dtype != np.uint8:
            raise UndecodableImage("the isolated decoder sent back a malformed result")
        return out

    def video(self, data: bytes, request: dict[str, Any], *, timeout: float,
              total: float | None = None) -> VideoStream:
        """Probe, plan and decode a video in a child: a :class:`VideoStream` of :class:`VideoReply` items,
        ``kind`` "info" first (``meta``: what the container declares and the plan), then one "frame" per
        sampled frame (``meta``: index and time_ms; ``x``: the model input; ``thumb``: a thumbnail when
        ``request["thumb"]`` asks).

        ``request`` holds the video's ``container`` and limits (:func:`nsfw_core.images.video.frames`'s
        arguments, and ``size`` the model input's side).  Each reply must come within ``timeout`` seconds,
        all of them within ``total`` (None: no total).  Close the stream (``with``): one closed before its
        end (from any thread) kills its child.
        """
        return VideoStream(self, data, request, timeout, total)

    def warm(self) -> None:
        """Start one child ahead of the first isolated decode (it imports numpy and Pillow, which takes a moment)."""
        with self._lock:
            if not self._idle:
                self._idle.append(_Child.start())

    def close(self) -> None:
        with self._lock:
            children, self._idle = self._idle, []
        for child in children:
            child.kill()

    def _call(self, request: dict[str, Any], data: bytes, cost_pixels: int) -> np.ndarray:
        request["headroom"] = max(MIN_HEADROOM, BYTES_PER_COST_PIXEL * cost_pixels)
        with self._slots:
            with self._lock:
                child = self._idle.pop() if self._idle else None
            if child is None or child.proc.poll() is not None:
                child = _Child.start()
            try:
                result = child.call(request, data, self.timeout)
            except DecodeTimeout:
                self.killed += 1
                child.kill()
                raise
            except BaseException:  # a broken pipe, a dead child, a malformed reply: never reuse it
                child.kill()
                raise
            with self._lock:  # a clean answer, an image or a typed error: the child goes on
                self._idle.append(child)
            if isinstance(result, NSFWError):
                raise result
            return result


class VideoStream:
    """One video's replies from a child of ``sandbox`` (see :meth:`Sandbox.video`); iterate, then close."""

    def __init__(self, sandbox: Sandbox, data: bytes, request: dict[str, Any], timeout: float,
                 total: float | None) -> None:
        self.sandbox = sandbox
        self.timeout = timeout
        self._data: bytes | None = data
        self._request = request
        self._total = total
        self._child: _Child | None = None
        self._slot = False
        self._state = "new"  # new, running, clean (ended, the child reusable), closed
        self._lock = threading.Lock()
        self._started = 0.0

    def __enter__(self) -> VideoStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[VideoReply]:
        return self

    def __next__(self) -> VideoReply:
        if self._state == "new":
            self._begin()
        if self._state != "running":
            raise StopIteration
        child = self._child
        assert child is not None
        deadline = time.monotonic() + self.timeout
        if self._total is not None:
            deadline = min(deadline, self._started + self._total)
        try:
            reply, body = child.receive(deadline)
        except DecodeTimeout:
            self.sandbox.killed += 1
            self._abandon()
            raise
        except BaseException:
            self._abandon()
            raise
        if not reply.get("ok"):
            self._finish()
            raise _error(reply)
        if reply.get("kind") == "end":
            self._finish()
            raise StopIteration
        try:
            return _video_reply(reply, body)
        except BaseException:
            self._abandon()
            raise

    def _begin(self) -> None:
        self.sandbox._slots.acquire()
        self._slot = True
        with self.sandbox._lock:
            child = self.sandbox._idle.pop() if self.sandbox._idle else None
        if child is None or child.proc.poll() is not None:
            child = _Child.start()
        with self._lock:
            self._child, self._state = child, "running"
        data, self._data = self._data, None
        assert data is not None
        try:
            child.send({**self._request, "op": "video", "headroom": MIN_HEADROOM}, data, self.timeout)
        except BaseException:
            self._abandon()
            raise
        self._started = time.monotonic()

    def _finish(self) -> None:
        """The stream ended cleanly: the child goes back to the idle ones."""
        with self._lock:
            child, self._child, self._state = self._child, None, "clean"
        if child is not None:
            with self.sandbox._lock:
                self.sandbox._idle.append(child)
        self._release()

    def _abandon(self) -> None:
        with self._lock:
            child, self._child, self._state = self._child, None, "closed"
        if child is not None:
            child.kill()
        self._release()

    def _release(self) -> None:
        with self._lock:
            held, self._slot = self._slot, False
        if held:
            self.sandbox._slots.release()

    def interrupt(self) -> None:
        """From another thread than the reader's: kill a child mid-stream (SIGKILL, its pipes left open), so a
        reader blocked on it gets an error at once; :meth:`close` then releases the pipes and the slot."""
        with self._lock:
            child = self._child if self._state == "running" else None
        if child is not None and child.proc.poll() is None:
            child.proc.kill()

    def close(self) -> None:
        """Stop: a child still mid-stream is killed and its slot freed (call it from the reader's thread, or after
        :meth:`interrupt` once the reader is done)."""
        if self._state in ("new", "running"):
            self._abandon()
        self._data = None


@dataclasses.dataclass(frozen=True)
class VideoReply:
    """One reply of a video's stream (see :meth:`Sandbox.video`)."""

    kind: str  # "info" or "frame"
    meta: dict[str, Any]
    x: np.ndarray | None = None  # a frame's model input, (S, S, 3) float32
    thumb: np.ndarray | None = None  # a frame's thumbnail, (side, side, 3) uint8


def _error(reply: dict[str, Any]) -> NSFWError:
    cls = _ERRORS.get(str(reply.get("error")), UndecodableImage)
    found = reply.get("details")
    details: dict[str, Any] = found if isinstance(found, dict) else {}
    return cls(str(reply.get("message", "the image could not be decoded"))[:500], **details)


def _video_reply(reply: dict[str, Any], body: bytes) -> VideoReply:
    kind = reply.get("kind")
    meta = reply.get("meta") if isinstance(reply.get("meta"), dict) else None
    if kind == "info" and meta is not None and not body:
        return VideoReply("info", meta)
    if kind != "frame" or meta is None:
        raise UndecodableImage("the isolated decoder sent back a malformed result")
    shapes = [tuple(int(n) for n in reply.get("shape", ())), tuple(int(n) for n in reply.get("thumb", ()) or ())]
    sizes = [int(np.prod(shapes[0])) * 4, int(np.prod(shapes[1])) if shapes[1] else 0]
    if len(shapes[0]) != 3 or shapes[0][2] != 3 or sizes[0] + sizes[1] != len(body) or \
            (shapes[1] and (len(shapes[1]) != 3 or shapes[1][2] != 3)):
        raise UndecodableImage("the isolated decoder sent back a malformed result")
    x = np.frombuffer(body, np.float32, count=sizes[0] // 4).reshape(shapes[0]).copy()
    thumb = np.frombuffer(body, np.uint8, offset=sizes[0]).reshape(shapes[1]).copy() if shapes[1] else None
    return VideoReply("frame", meta, x, thumb)


class _Child:
    """One ``python -m nsfw_core.images.sandbox`` process and its pipes."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.timeout = 0.0

    @classmethod
    def start(cls) -> "_Child":
        # nsfw_core is an installed package (or the working directory holds it, as when the server
        # runs from the checkout): the child imports the same code without any path set up here.
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MALLOC_ARENA_MAX": "1"}
        proc = subprocess.Popen([sys.executable, "-m", "nsfw_core.images.sandbox"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, env=env, close_fds=True)
        return cls(proc)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                try:
                    stream.close()
                except OSError:
                    pass
        self.proc.wait()

    def send(self, request: dict[str, Any], data: bytes, timeout: float) -> None:
        """Write one request (the reply is read by :meth:`receive`)."""
        assert self.proc.stdin is not None
        self.timeout = timeout
        header = json.dumps(request).encode()
        try:
            self.proc.stdin.write(_FRAME.pack(len(header), len(data)) + header)
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except (OSError, ValueError) as exc:  # a dead child: broken pipe, or a pipe closed by kill()
            raise UndecodableImage("the isolated decoder is not running") from exc

    def receive(self, deadline: float) -> tuple[dict[str, Any], bytes]:
        """One reply: its JSON header and its body.  Raises when the child misbehaves."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        head_len, body_len = _FRAME.unpack(self._read(fd, _FRAME.size, deadline))
        if head_len > _MAX_HEADER or body_len > (256 << 20):
            raise UndecodableImage("the isolated decoder sent back a malformed result")
        try:
            reply = json.loads(self._read(fd, head_len, deadline))
        except ValueError as exc:
            raise UndecodableImage("the isolated decoder sent back a malformed result") from exc
        if not isinstance(reply, dict):
            raise UndecodableImage("the isolated decoder sent back a malformed result")
        return reply, self._read(fd, body_len, deadline)

    def call(self, request: dict[str, Any], data: bytes, timeout: float) -> np.ndarray | NSFWError:
        """The child's answer: the array, or the typed error it reported. Raises when the child
        misbehaves (deadline, death, malformed reply); the caller then kills it."""
        deadline = time.monotonic() + timeout
        self.send(request, data, timeout)
        reply, body = self.receive(deadline)
        if not reply.get("ok"):  # returned, not raised: the child answered cleanly and may be reused
            cls = _ERRORS.get(str(reply.get("error")), UndecodableImage)
            raw = reply.get("details")
            details: dict[str, Any] = raw if isinstance(raw, dict) else {}
            return cls(str(reply.get("message", "the image could not be decoded"))[:500], **details)
        dtype = _DTYPES.get(str(reply.get("dtype")))
        try:
            shape = tuple(int(n) for n in reply.get("shape", ()))
        except (TypeError, ValueError) as exc:
            raise UndecodableImage("the isolated decoder sent back a malformed result") from exc
        if dtype is None or len(shape) not in (3, 4) or int(np.prod(shape)) * np.dtype(dtype).itemsize != len(body):
            raise UndecodableImage("the isolated decoder sent back a malformed result")
        return np.frombuffer(body, dtype=dtype).reshape(shape).copy()

    def _read(self, fd: int, n: int, deadline: float) -> bytes:
        chunks, got = [], 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise DecodeTimeout(f"decoding the image took longer than the {self.timeout:g} s deadline "
                                    "(NSFW_DECODE_TIMEOUT)", timeout_s=self.timeout)
            chunk = os.read(fd, min(n - got, 1 << 20))
            if not chunk:
                try:  # the child closed its end: it is exiting; its status tells why
                    code: int | None = self.proc.wait(timeout=1.0)
                except subprocess.TimeoutExpired:
                    code = None
                if code is not None and code < 0 and -code in (signal.SIGKILL, signal.SIGSEGV, signal.SIGABRT):
                    raise UndecodableImage(f"the decoder crashed on this image (signal {-code})")
                raise UndecodableImage(f"the decoder stopped on this image (exit status {code})")
            chunks.append(chunk)
            got += len(chunk)
        return b"".join(chunks)


# ---------------------------------------------------------------- the child


def _read_exact(stream: BinaryIO, n: int) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise EOFError
    return data


def _address_space() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[0]) * resource.getpagesize()


def _serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    from nsfw_core.images import decode as _decode
    from nsfw_core.images.preprocess import preprocess

    _decode.decode(_decode_probe())  # import every plugin now, outside any limit
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    while True:
        try:
            head_len, body_len = _FRAME.unpack(_read_exact(stdin, _FRAME.size))
            request = json.loads(_read_exact(stdin, head_len))
            data = _read_exact(stdin, body_len)
        except EOFError:
            return
        if request.get("op") == "video":
            _serve_video(request, data, stdout, hard)
            continue
        limit = _address_space() + int(request["headroom"])
        resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
        try:
            limits = {"max_pixels": int(request["max_pixels"]), "max_scans": int(request["max_scans"]),
                      "draft_size": request.get("draft_size")}
            if "frames" in request:
                indices = tuple(int(i) for i in request["frames"])
                size = int(request.get("size") or request.get("side") or 0)
                shrink = functools.partial(preprocess, size=size) if request["op"] == "prepare" else \
                    functools.partial(thumbnail, side=size)
                out = np.stack(_decode.decode_frames(data, indices, each=shrink, **limits))
            else:
                rgb = _decode.decode(data, **limits)
                out = preprocess(rgb, int(request["size"])) if request["op"] == "prepare" else _preview(rgb)
                del rgb
            reply: dict[str, Any] = {"ok": True, "dtype": str(out.dtype), "shape": list(out.shape)}
            body = np.ascontiguousarray(out).tobytes()
        except MemoryError:
            reply, body = {"ok": False, "error": "ImageTooLarge",
                           "message": "decoding the image needed more memory than its declared size allows"}, b""
        except NSFWError as exc:
            reply, body = {"ok": False, "error": type(exc).__name__, "message": exc.message,
                           "details": exc.details}, b""
        finally:
            resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
        header = json.dumps(reply, default=str).encode()
        stdout.write(_FRAME.pack(len(header), len(body)) + header + body)
        stdout.flush()


def _video_warm() -> None:
    try:
        from nsfw_core.images import video

        video._av()  # FFmpeg's libraries mapped now, outside any limit
    except ImportError:  # pragma: no cover - PyAV is pinned in requirements.txt
        pass


def _limit(headroom: int, hard: int) -> None:
    limit = _address_space() + headroom
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))


def _send(stdout: BinaryIO, reply: dict[str, Any], body: bytes = b"") -> None:
    header = json.dumps(reply, default=str).encode()
    stdout.write(_FRAME.pack(len(header), len(body)) + header + body)
    stdout.flush()


def _failure(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, MemoryError):
        return {"ok": False, "error": "ImageTooLarge",
                "message": "decoding the video needed more memory than its declared frame size allows"}
    assert isinstance(exc, NSFWError)
    return {"ok": False, "error": type(exc).__name__, "message": exc.message, "details": exc.details}


def _serve_video(request: dict[str, Any], data: bytes, stdout: BinaryIO, hard: int) -> None:
    """One video: the "info" reply, a "frame" reply per sampled frame, then "end" (or an error reply)."""
    from nsfw_core.images import video
    from nsfw_core.images.preprocess import preprocess

    size, side = int(request["size"]), int(request.get("thumb") or 0)
    _video_warm()  # FFmpeg's libraries, on the child's first video (images need none of it)

    def each(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        return preprocess(rgb, size), (thumbnail(rgb, side) if side else None)

    _limit(int(request["headroom"]), hard)
    try:
        stream = video.frames(
            data, str(request["container"]), max_pixels=int(request["max_pixels"]), fps=float(request["fps"]),
            max_frames=int(request["max_frames"]), seed=int(request["seed"]),
            max_ms=None if request.get("max_ms") is None else int(request["max_ms"]), skip=int(request.get("skip", 0)),
            at_ms=None if request.get("at_ms") is None else int(request["at_ms"]), each=each)
        head = next(stream)
        found, plan = head[0], head[1]
        assert isinstance(found, video.Declared) and isinstance(plan, video.Plan)
        _limit(max(MIN_HEADROOM, video.BYTES_PER_PIXEL * found.width * found.height), hard)
        _send(stdout, {"ok": True, "kind": "info", "meta": {
            **found.to_dict(), "duration_ms": plan.duration_ms, "packets": plan.packets, "keyframes": plan.keyframes,
            "decoded": plan.decoded, "decoded_bytes": plan.decoded_bytes,
            "samples": [[s.index, s.time_ms] for s in plan.samples]}})
        for sample, out in stream:
            assert isinstance(sample, video.Sample) and isinstance(out, tuple)
            x, thumb = out
            meta = {"index": sample.index, "time_ms": sample.time_ms}
            body = np.ascontiguousarray(x, dtype=np.float32).tobytes()
            reply: dict[str, Any] = {"ok": True, "kind": "frame", "meta": meta, "shape": list(x.shape)}
            if thumb is not None:
                reply["thumb"] = list(thumb.shape)
                body += np.ascontiguousarray(thumb, dtype=np.uint8).tobytes()
            _send(stdout, reply, body)
        final: dict[str, Any] = {"ok": True, "kind": "end"}
    except (MemoryError, NSFWError) as exc:
        final = _failure(exc)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (hard, hard))
    _send(stdout, final)


def thumbnail(rgb: np.ndarray, side: int) -> np.ndarray:
    """``rgb`` fitted into a white ``side`` x ``side`` square (aspect kept): the same shape for every frame."""
    from PIL import Image

    img = Image.fromarray(rgb)
    img.thumbnail((side, side))
    canvas = Image.new("RGB", (side, side), (255, 255, 255))
    canvas.paste(img, ((side - img.width) // 2, (side - img.height) // 2))
    return np.asarray(canvas)


def _preview(rgb: np.ndarray) -> np.ndarray:
    if max(rgb.shape[:2]) <= PREVIEW_SIDE:
        return rgb
    from PIL import Image

    img = Image.fromarray(rgb)
    img.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE))
    return np.asarray(img)


def _decode_probe() -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    return buf.getvalue()


def _die_with_parent() -> None:
    """SIGKILL this child when the server dies, even mid-decode (it would only see EOF after it)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child still exits at EOF after its decode
        return
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(0)


if __name__ == "__main__":  # pragma: no cover - run as the child process
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the server's Ctrl-C is for the server
    _protocol = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into the replies
    _serve(sys.stdin.buffer, _protocol)
