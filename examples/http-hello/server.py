#!/usr/bin/env python3
"""The http-hello function: a plain HTTP server on $PORT, as Knative and of-watchdog's http mode run them."""

import json
import os
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, urlsplit


class Hello(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the runner reuses one connection for every call

    def do_GET(self):
        # Read the body even when unused: on a kept-alive connection it would prefix the next request.
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        name = parse_qs(url.query).get("name", ["world"])[0]
        print(f"greeting {name}")  # goes to this call's logs
        body = json.dumps({"hello": name, "path": url.path, "function": os.environ.get("K_SERVICE"),
                           "request_id": self.headers.get("X-Easyfaas-Request-Id")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Set-Cookie", f"greeted={name}")
        self.end_headers()
        self.wfile.write(body)

    do_POST = do_GET

    def log_message(self, format, *args):
        pass


HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Hello).serve_forever()
