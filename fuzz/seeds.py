#!/usr/bin/env python3
"""Writes the committed seed corpus under corpus/<target>/seed-* (docs/fuzzing.md).

HPACK: RFC 7541 Appendix C. HTTP/1.1: real request and response heads, chunked bodies among them.
HTTP/2: the bytes real clients (nghttp and curl, both on libnghttp2) send after the preface,
recorded by a loopback server here (skipped when neither is installed). Configuration: the
repository's example files. Each target's first byte is its knobs (see fuzz_targets/)."""

import pathlib, re, shutil, socket, subprocess, threading

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def put(target, name, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / f"seed-{name}").write_bytes(data)


def hx(s):
    return bytes.fromhex(re.sub(r"\s", "", s))


# --- hpack_decode: knobs byte (bits 0-2 table limit, 3-4 list limit), blocks split by ff 00 ----
SEP = b"\xff\x00"
C2 = [
    "400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572",
    "040c 2f73 616d 706c 652f 7061 7468",
    "1008 7061 7373 776f 7264 0673 6563 7265 74",
    "82",
]
C3 = [
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
]
C4 = [
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
]
C5 = [
    "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32"
    "3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "4803 3330 37c1 c0bf",
    "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d 54c0 5a04 677a 6970"
    "7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049 5541 5851 5745 4f49 553b 206d 6178 2d61"
    "6765 3d33 3630 303b 2076 6572 7369 6f6e 3d31",
]
C6 = [
    "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6 2d1b ff6e 919d 29ad"
    "1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
    "4883 640e ffc1 c0bf",
    "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab 77ad 94e7 821d d7f2"
    "e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f 9587 3160 65c0 03ed 4ee5 b106 3d50 07",
]
for i, b in enumerate(C2):
    put("hpack_decode", f"rfc7541-c2-{i + 1}", bytes([3]) + hx(b))
for name, blocks, knobs in [("c3", C3, 3), ("c4", C4, 3), ("c5", C5, 2), ("c6", C6, 2)]:
    put("hpack_decode", f"rfc7541-{name}", bytes([knobs]) + SEP.join(hx(b) for b in blocks))
# The same requests under a 100-byte header-list limit, and a table size update to 0 first.
put("hpack_decode", "rfc7541-c3-list-limit", bytes([3 | 2 << 3]) + SEP.join(hx(b) for b in C3))
put("hpack_decode", "size-update", bytes([3]) + b"\x20" + hx(C3[0]))

# --- http1_request: knobs byte (the TCP split), then the bytes a client sends -----------------
REQUESTS = {
    "get": b"GET /index.html?q=1 HTTP/1.1\r\nHost: shop.example\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n",
    "keepalive-two": b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b?status=404 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "post-length": b"POST /up?echo_body=1 HTTP/1.1\r\nHost: a\r\nContent-Type: text/plain\r\nContent-Length: 11\r\n\r\nhello world",
    "post-chunked": b"POST /up?echo_body=1 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: yes\r\n\r\n",
    "chunked-then-get": b"PUT /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"a\r\n0123456789\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "expect-continue": b"POST /e HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
    "http10": b"GET /old HTTP/1.0\r\n\r\n",
    "absolute-form": b"GET http://b.example:8080/x?y HTTP/1.1\r\nHost: ignored\r\n\r\n",
    "options-star": b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
    "connection-named": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, x-drop\r\nx-drop: 1\r\nTE: trailers\r\n"
    b"X-Forwarded-For: 10.0.0.1\r\nX-Request-Id: abc\r\ntraceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\r\n",
    "websocket-upgrade": b"GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    "h2c-upgrade": b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    "te-and-length": b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "gzip-chunked": b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    "prior-knowledge": PREFACE + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00",
}
for name, data in REQUESTS.items():
    put("http1_request", name, b"\x00" + data)
put("http1_request", "post-chunked-split", b"\x07" + REQUESTS["post-chunked"])

# --- http1_response: knobs byte (bit 0 HEAD, bit 1 upgrade asked, the rest the split) ---------
RESPONSES = {
    "length": (0, b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"),
    "chunked-trailers": (0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: grpc-status\r\n\r\n"
                            b"3\r\nabc\r\n10;x=y\r\n0123456789abcdef\r\n0\r\ngrpc-status: 0\r\n\r\n"),
    "chunked-split": (7 << 2, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nWiki\r\n5\r\npedia\r\n0\r\n\r\n"),
    "interim-then-final": (0, b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
                              b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"),
    "until-close": (0, b"HTTP/1.0 200 OK\r\nServer: old\r\n\r\nbody until the close"),
    "head": (1, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n"),
    "no-content": (0, b"HTTP/1.1 204 No Content\r\nConnection: keep-alive\r\n\r\n"),
    "not-modified": (0, b"HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"),
    "switching": (2, b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n\x81\x05hello"),
    "connection-close": (0, b"HTTP/1.1 503 Service Unavailable\r\nConnection: close, x-hop\r\nx-hop: 1\r\nContent-Length: 4\r\n\r\nbusy"),
    "te-and-length": (0, b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: gzip, chunked\r\n\r\n1\r\nx\r\n0\r\n\r\n"),
}
for name, (knobs, data) in RESPONSES.items():
    put("http1_response", name, bytes([knobs]) + data)

# --- config: the repository's example files ---------------------------------------------------
put("config", "valid", (ROOT / "tests/fixtures/valid.yaml").read_bytes())
put("config", "many-problems", (ROOT / "tests/fixtures/many_problems.yaml").read_bytes())
doc = (ROOT / "docs/configuration.md").read_text()
complete = doc.split("## A complete file", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
put("config", "complete-defaults", complete.encode())
cm = (ROOT / "deploy/base/shared/configmap-tandem.yaml").read_text()
put("config", "deploy-configmap", "\n".join(l[4:] for l in cm.split("tandem.yaml: |\n", 1)[1].splitlines()).encode())
put("config", "outbound-policy", b"outbound:\n  allow_non_loopback: true\n  allow: ['*.svc.cluster.local:80', 'api.example:443']\n"
    b"  deny: ['10.0.0.0/8']\ninbound:\n  tls:\n    cert: /c.pem\n    key: /k.pem\n")


# --- h2_connection: knobs byte (the TCP split), then what a real client sends after the preface
def record(argv):
    """Runs a client against a loopback server that answers SETTINGS, SETTINGS ACK and a 200;
    returns the bytes the client sent after the preface."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(5)
    port = srv.getsockname()[1]
    got = bytearray()

    def serve():
        try:
            c, _ = srv.accept()
        except OSError:
            return
        c.settimeout(0.5)
        c.sendall(b"\x00\x00\x00\x04\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x04\x01\x00\x00\x00\x00")
        answered = False
        while True:
            try:
                b = c.recv(65536)
            except OSError:
                break
            if not b:
                break
            got.extend(b)
            if not answered and len(got) > 60:
                # HEADERS :status 200, END_STREAM|END_HEADERS, stream 1; then GOAWAY NO_ERROR.
                c.sendall(b"\x00\x00\x01\x01\x05\x00\x00\x00\x01\x88")
                c.sendall(b"\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00")
                answered = True
        c.close()

    t = threading.Thread(target=serve)
    t.start()
    subprocess.run([a.replace("PORT", str(port)) for a in argv], capture_output=True, timeout=10)
    t.join()
    srv.close()
    data = bytes(got)
    return data[len(PREFACE):] if data.startswith(PREFACE) else None


CLIENTS = {
    "nghttp-get": ["nghttp", "-n", "http://127.0.0.1:PORT/index.html?q=1"],
    "nghttp-post": ["nghttp", "-n", "-d", str(ROOT / "tests/fixtures/valid.yaml"), "-H", "x-trace: 1",
                    "http://127.0.0.1:PORT/up?echo_body=1"],
    "curl-get": ["curl", "-s", "--http2-prior-knowledge", "-H", "cookie: a=1", "-H", "cookie: b=2",
                 "http://127.0.0.1:PORT/c"],
    "curl-post": ["curl", "-s", "--http2-prior-knowledge", "--data-binary", "hello", "http://127.0.0.1:PORT/up"],
}
for name, argv in CLIENTS.items():
    if shutil.which(argv[0]) is None:
        print(f"{argv[0]} not installed: {name} skipped")
        continue
    data = record(argv)
    if data:
        put("h2_connection", name, b"\x00" + data)
        put("h2_connection", name + "-split", b"\x05" + data)
    else:
        print(f"{name}: no preface recorded")
