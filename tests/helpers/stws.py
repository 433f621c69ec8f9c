"""A client of Streamlit's own websocket protocol (``/_stcore/stream``), as the frontend speaks it.

It sends ``BackMsg`` ``rerun_script`` messages (the page by its URL path or script hash, and widget
states) and reads the ``ForwardMsg`` answers (navigation, page-not-found, the elements of the page)
until the run finishes.  Used by tests/test_signin_websocket.py and tests/test_uploads.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
import time
from typing import Any, Iterator

RUN_S = 90.0  # one script run; the calibrate page scores the demo set on its first run


@dataclasses.dataclass(frozen=True)
class Element:
    kind: str  # the Element oneof: "button", "download_button", "heading", "markdown"...
    id: str  # widgets only
    text: str  # a widget's label, else the body of text elements

    @property
    def key(self) -> str:
        """The user key or identity part of a widget id ("$$ID-<hash>-<key>")."""
        return self.id.split("-", 2)[2] if self.id.startswith("$$ID-") else self.id


@dataclasses.dataclass
class Run:
    """The forward messages of one rerun request, up to the end of the script run."""

    messages: list[Any]

    def of(self, kind: str) -> list[Any]:
        return [getattr(m, kind) for m in self.messages if m.WhichOneof("type") == kind]

    @property
    def navigation(self) -> list[tuple[str, str, str]]:
        """The pages of the latest navigation message: (url path, title, script hash)."""
        navs = self.of("navigation")
        assert navs, "no navigation message"
        return [(p.url_pathname, p.page_name, p.page_script_hash) for p in navs[-1].app_pages]

    @property
    def page_not_found(self) -> bool:
        return bool(self.of("page_not_found"))

    @property
    def elements(self) -> list[Element]:
        out = []
        for delta in self.of("delta"):
            if delta.WhichOneof("type") != "new_element":
                continue
            element = delta.new_element
            kind = element.WhichOneof("type")
            proto = getattr(element, kind)
            fields = {f.name for f in proto.DESCRIPTOR.fields}
            text = proto.label if "label" in fields else proto.body if "body" in fields else ""
            out.append(Element(kind, proto.id if "id" in fields else "", text))
        return out

    @property
    def widgets(self) -> list[Element]:
        return [e for e in self.elements if e.id]

    @property
    def headings(self) -> list[str]:
        return [e.text for e in self.elements if e.kind == "heading"]

    def texts(self) -> str:
        return "\n".join(e.text for e in self.elements)

    def widget(self, key: str) -> Element:
        found = [e for e in self.widgets if e.key == key or (not key.startswith("$$") and e.text == key
                                                                and e.kind == "button")]
        assert len(found) == 1, (key, [(e.kind, e.key, e.text) for e in self.widgets])
        return found[0]


def trigger(widget_id: str) -> Any:
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    return WidgetState(id=widget_id, trigger_value=True)


def text(widget_id: str, value: str) -> Any:
    from streamlit.proto.WidgetStates_pb2 import WidgetState

    return WidgetState(id=widget_id, string_value=value)


class Session:
    """One browser tab as the server sees it: a websocket on /_stcore/stream."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws

    def run(self, *, page: str = "", page_hash: str = "", widgets: tuple[Any, ...] = (), timeout: float = RUN_S) -> Run:
        """Ask for a run of ``page`` (URL path) or ``page_hash`` with ``widgets``; its messages.

        A run that ends early for a rerun (``st.rerun``) is followed by the next, all in one :class:`Run`.
        """
        from streamlit.proto.BackMsg_pb2 import BackMsg
        from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

        msg = BackMsg()
        state = msg.rerun_script
        state.query_string = ""
        state.page_name = page
        state.page_script_hash = page_hash
        state.widget_states.widgets.extend(widgets)
        self.ws.send(msg.SerializeToString())
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            try:
                data = self.ws.recv(timeout=max(left, 0.01))
            except TimeoutError:
                raise AssertionError(f"the run of {page or page_hash or 'the default page'!r} did not finish in "
                                     f"{timeout} s: {[m.WhichOneof('type') for m in messages]}") from None
            forward = ForwardMsg()
            forward.ParseFromString(data)
            messages.append(forward)
            if forward.WhichOneof("type") == "script_finished" and \
                    forward.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                assert forward.script_finished == ForwardMsg.FINISHED_SUCCESSFULLY, forward
                return Run(messages)


@contextlib.contextmanager
def session(base: str, host: str | None = None, headers: dict[str, str] | None = None) -> Iterator[Session]:
    """A websocket to the server at ``base`` whose handshake says ``Host: host`` (default: the real one)."""
    from websockets.sync.client import connect
    from websockets.typing import Subprotocol

    address = base.removeprefix("http://")
    ip, port = address.rsplit(":", 1)
    sock = socket.create_connection((ip, int(port)), timeout=10)
    with connect(f"ws://{host or address}/_stcore/stream", sock=sock, subprotocols=[Subprotocol("streamlit")],
                 additional_headers=headers, max_size=None, open_timeout=10, close_timeout=5) as ws:
        yield Session(ws)
