"""Make tests/data/har/browser.har from a HAR that `rrproxy export --to har` wrote (see
README.md here): python tests/data/har/make_browser_har.py IN.har > browser.har"""

from __future__ import annotations

import copy
import json
import re
import sys

HOST = "https://api.example.test"
SSE_TEXT = 'event: delta\ndata: {"text": "café"}\n\ndata: [DONE]\n\n'


def strip(obj: dict) -> dict:
    """What only rrproxy writes goes; what a browser writes comes."""
    obj = {k: v for k, v in obj.items() if not k.startswith("_rrproxy")}
    text = re.sub(r"http://127\.0\.0\.1:\d+", HOST, json.dumps(obj))
    obj = json.loads(text)
    obj["request"]["headers"] = [
        {"name": ":authority", "value": "api.example.test"},
        *[h for h in obj["request"]["headers"] if h["name"].lower() != "host"],
    ]
    obj["_initiator"] = {"type": "script"}  # Chrome's own custom fields are ignored
    return obj


def main() -> None:
    doc = json.load(open(sys.argv[1]))
    sse, binary, models = (strip(e) for e in doc["log"]["entries"])
    # 2: a text SSE stream (the recording's first one holds bytes, so it stays base64).
    text_sse = copy.deepcopy(sse)
    text_sse["request"]["postData"]["text"] = '{"q": 2}'
    text_sse["request"]["bodySize"] = 8
    text_sse["response"]["content"] = {
        "size": len(SSE_TEXT.encode()),
        "mimeType": "text/event-stream",
        "text": SSE_TEXT,
    }
    # 3: the gzip body, saved decoded with its Content-Encoding header, as browsers do; and
    # a key in Authorization, which the import must redact.
    models["request"]["headers"].append({"name": "Authorization", "value": "Bearer sk-abc"})
    # 4: a body the browser did not keep; 5: a request the browser blocked (status 0).
    unsaved = copy.deepcopy(models)
    unsaved["request"]["url"] = f"{HOST}/v1/files/f1"
    unsaved["request"]["queryString"] = []
    unsaved["response"]["content"] = {"size": 1234, "mimeType": "application/octet-stream"}
    blocked = copy.deepcopy(unsaved)
    blocked["request"]["url"] = f"{HOST}/v1/blocked"
    blocked["response"].update(status=0, statusText="", headers=[], bodySize=-1)
    blocked["response"]["content"] = {"size": 0, "mimeType": "x-unknown"}
    blocked["_error"] = "net::ERR_BLOCKED_BY_CLIENT"
    del binary  # its request body is bytes, which HAR's postData cannot hold
    log = {
        "version": "1.2",
        "creator": {"name": "WebInspector", "version": "537.36"},
        "pages": [],
        "entries": [sse, text_sse, models, unsaved, blocked],
    }
    json.dump({"log": log}, sys.stdout, indent=2, ensure_ascii=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
