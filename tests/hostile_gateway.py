"""A hostile E-HPC Instant gateway for the tests: scripted raw answers, independent of the simulator.

It speaks just enough of the OpenAPI wire protocol (``POST /?<query>`` with ``x-acs-action``) to be
called by the exporter, never checks a signature, and answers each request from a script chosen by the
requested ``ImageId`` (GetImage) or by the caller's AccessKey id (ListImages, so several exporters can
share one gateway), falling back to a plausible good answer. A script returns raw bytes: status,
headers and a body that may be anything at all (invalid UTF-8, JSON nested 200,000 deep, 1 MB strings).

Bodies are built from Python values with :func:`render`, where :class:`Raw` splices a JSON text
fragment in verbatim, so ``Raw(b'"Bad\\\\udfff"')`` puts an escaped lone surrogate in a field and
``Raw(b'"\\xff"')`` puts a raw invalid UTF-8 byte there.
"""

from __future__ import annotations

import contextlib
import copy
import json
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

__all__ = [
    "Answer",
    "HostileGateway",
    "Raw",
    "Request",
    "Script",
    "error_answer",
    "good_image",
    "good_list_page",
    "json_answer",
    "list_item",
    "render",
    "with_path",
]

GOOD_SIZE = "40 GiB"
GOOD_CREATE_TIME = "2022-12-23T09:51:39Z"
GOOD_CREATE_TS = 1671789099.0  # GOOD_CREATE_TIME as Unix seconds


@dataclass(frozen=True)
class Raw:
    """A JSON text fragment spliced into a rendered body as is (it need not be valid anything)."""

    text: bytes


def render(value: Any) -> bytes:
    """JSON text of ``value`` (UTF-8, no ASCII escaping), with every :class:`Raw` spliced in verbatim."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Mapping):
        items = (json.dumps(str(k)).encode() + b":" + render(v) for k, v in value.items())
        return b"{" + b",".join(items) + b"}"
    if isinstance(value, list | tuple):
        return b"[" + b",".join(render(v) for v in value) + b"]"
    return json.dumps(value, ensure_ascii=False).encode("utf-8")


def with_path(doc: Any, path: Sequence[str | int], value: Any) -> Any:
    """A deep copy of ``doc`` with the element at ``path`` set to ``value`` (containers are created)."""
    out = copy.deepcopy(doc)
    node = out
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return out


@dataclass(frozen=True)
class Answer:
    """One raw HTTP answer."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/json"),)


@dataclass(frozen=True)
class Request:
    """What a script is told about the request it answers."""

    action: str
    params: Mapping[str, str]
    access_key_id: str
    count: int  # answers this script's key has had before this one


Script = Callable[[Request], Answer]


def json_answer(doc: Any, status: int = 200, headers: Sequence[tuple[str, str]] = ()) -> Answer:
    """An answer with ``render(doc)`` as its JSON body."""
    return Answer(status, render(doc), (("Content-Type", "application/json"), *headers))


def error_answer(
    code: Any = "InvalidParams",
    message: Any = "The specified parameter is invalid.",
    request_id: Any = "R-E",
    status: int = 400,
) -> Answer:
    """An OpenAPI error body ``{"Code","Message","RequestId"}`` (any field may be a :class:`Raw`)."""
    return json_answer({"Code": code, "Message": message, "RequestId": request_id}, status)


def good_image(
    image_id: str,
    image_type: str = "VM",
    regions: Mapping[str, str] | None = None,
    *,
    name: str = "hostile-app",
    version: str = "v1.0",
    registry_url: str = "registry-vpc.cn-hangzhou.aliyuncs.com/ehpc_open/nginx:latest",
    registry_user: str = "puller",
    registry_password: str = "",
) -> dict[str, Any]:
    """A complete, plausible GetImage 200 body (the seed reference's shape) for one image."""
    image: dict[str, Any] = {
        "ImageType": image_type,
        "AppId": "app-1",
        "Name": name,
        "Version": version,
        "Description": "hostile gateway test image",
        "Size": GOOD_SIZE,
        "CreateTime": GOOD_CREATE_TIME,
        "Status": "Available",
        "DocumentInfo": {"DocumentId": "doc-1", "EncodingMode": "plain", "Document": "readme"},
        "AdditionalRegionsInfo": [
            {"Status": status, "ImageId": image_id, "RegionId": region}
            for region, status in (regions or {}).items()
        ],
    }
    if image_type == "Container":
        image["ContainerImageSpec"] = {
            "RegistryUrl": registry_url,
            "IsACRRegistry": True,
            "IsACREnterprise": False,
            "RegistryCriId": "cri-xyz795ygf8k9",
            "RegistryCredential": {
                "Server": "registry-vpc.cn-hangzhou.aliyuncs.com",
                "UserName": registry_user,
                "Password": registry_password,
            },
            "OsTag": "ubuntu 22.04",
            "Platform": "Ubuntu",
            "Architecture": "x86_64",
        }
    else:
        image["VMImageSpec"] = {
            "ImageId": image_id,
            "OsTag": "CentOS 7.6 64 bit",
            "Platform": "CentOS",
            "Architecture": "x86_64",
        }
    return {
        "RequestId": "04F0F334-1335-436C-A1D7-6C044FE73368",
        "Success": True,
        "TotalCount": 1,
        "Image": image,
    }


def good_list_page(
    items: Sequence[str], page_number: int, page_size: int, total: int | None = None
) -> dict[str, Any]:
    """One ListImages 200 body: page ``page_number`` of ``items`` (image ids), ``page_size`` per page."""
    start = (page_number - 1) * page_size
    return {
        "RequestId": f"R-LIST-{page_number}",
        "Success": True,
        "TotalCount": len(items) if total is None else total,
        "PageNumber": page_number,
        "PageSize": page_size,
        "Images": [list_item(i) for i in items[start : start + page_size]],
    }


def list_item(image_id: str) -> dict[str, Any]:
    """One ListImages item."""
    return {
        "ImageId": image_id,
        "ImageType": "VM",
        "Name": f"app-{image_id[-4:]}",
        "Version": "v1.0",
        "Description": "discovered",
        "AppId": "app-1",
        "OsTag": "CentOS 7.6 64 bit",
        "CreateTime": GOOD_CREATE_TIME,
        "UpdateTime": GOOD_CREATE_TIME,
    }


def _good_get_image(r: Request) -> Answer:
    return json_answer(good_image(r.params.get("ImageId", "")))


def _empty_list(_r: Request) -> Answer:
    return json_answer(good_list_page([], 1, 50))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256  # the exporter opens 50 connections at once; the default backlog is 5


_CREDENTIAL_RE = re.compile(r"Credential=([^,\s]+)")


@dataclass
class _Served:
    count: int = 0
    last: float = 0.0  # time.time() of the last answer


@dataclass
class HostileGateway:
    """The threaded gateway. ``get_image[id]`` and ``list_images[access_key_id]`` are the scripts.

    Unscripted GetImage ids get ``good_image(id)``; an unscripted ListImages caller an empty list.
    ``served(key)`` counts answers and when the last one went out (key: the image id, or
    ``"ListImages:" + access key id``), so a test can wait for the exporter to have seen an answer.
    """

    get_image: dict[str, Script] = field(default_factory=dict)
    list_images: dict[str, Script] = field(default_factory=dict)
    _served: dict[str, _Served] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                headers = {k.lower(): v for k, v in self.headers.items()}
                self._answer(gateway.answer(self.path, headers.get("x-acs-action", ""), headers))

            do_GET = do_POST

            def _answer(self, answer: Answer) -> None:
                self.send_response_only(answer.status)
                for name, value in answer.headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                with contextlib.suppress(OSError):  # the client may hang up on a body over its cap
                    self.wfile.write(answer.body)
                    self.wfile.flush()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def answer(self, path: str, action: str, headers: Mapping[str, str]) -> Answer:
        """The answer to one request (``headers`` with lower-case names); callable directly in tests."""
        params = {k: v[0] for k, v in parse_qs(urlsplit(path).query, keep_blank_values=True).items()}
        action = action or params.get("Action", "")
        m = _CREDENTIAL_RE.search(headers.get("authorization", ""))
        access_key_id = m.group(1) if m else ""
        if action == "ListImages":
            key = f"ListImages:{access_key_id}"
            script = self.list_images.get(access_key_id, _empty_list)
        else:
            key = params.get("ImageId", "")
            script = self.get_image.get(key, _good_get_image)
        with self._lock:
            served = self._served.setdefault(key, _Served())
            count = served.count
            served.count += 1
        try:
            answer = script(Request(action, params, access_key_id, count))
        except Exception as exc:  # a broken script must show in the test, not hang the exporter
            answer = Answer(599, f"script error: {exc!r}".encode())
        with self._lock:
            served.last = time.time()
        return answer

    def served(self, key: str) -> tuple[int, float]:
        """``(answers so far, time.time() of the last)`` for an image id or ``"ListImages:<akid>"``."""
        with self._lock:
            s = self._served.get(key, _Served())
            return s.count, s.last

    def __enter__(self) -> HostileGateway:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)
