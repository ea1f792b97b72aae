"""A registry front of our own, between imgfs and a real docker-registry:
it demands bearer tokens (issued by its own token endpoint against basic
credentials), redirects blob downloads to a second loopback host with a
signature that host checks (as object storage and CDNs do; expire_locations()
makes every signature given so far invalid), and can answer with 503 or 429
first.  It records what it saw, so tests can check
what imgfs sent where."""

import base64
import http.server
import json
import secrets
import threading
import urllib.error
import urllib.parse
import urllib.request


class AuthProxy:
    def __init__(self, upstream, user, password, fail_first=None, token_expires=300):
        self.upstream = upstream
        self.user, self.password = user, password
        self.tokens = set()
        self.token_requests = 0
        self.blob_host_auth_headers = []   # Authorization headers seen on the redirect target
        self.fail_first = dict(fail_first or {})  # path suffix -> [status, ...] to answer first
        self.token_expires = token_expires
        self.requests = []
        self.signatures = set()  # of the Locations given; the storage host refuses others
        self.storage_requests = []  # (path, Range header) the storage host answered
        # An identity token, as a browser login gives docker: exchanged by a
        # POST of OAuth2's refresh_token grant.
        self.refresh_token = "rt-" + secrets.token_hex(8)
        self.refresh_grants = 0
        proxy = self

        class Front(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                proxy.requests.append(self.path)
                if self.path.startswith("/token"):
                    return proxy.token(self)
                for suffix, statuses in proxy.fail_first.items():
                    if self.path.endswith(suffix) and statuses:
                        status = statuses.pop(0)
                        self.send_response(status)
                        if status == 429:
                            self.send_header("Retry-After", "1")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                auth = self.headers.get("Authorization", "")
                if not (auth.startswith("Bearer ") and auth[7:] in proxy.tokens):
                    repo = self.path.split("/")[2:4]
                    self.send_response(401)
                    self.send_header("WWW-Authenticate",
                                     f'Bearer realm="http://{proxy.front_host}/token",service="imgfs-test",'
                                     f'scope="repository:{"/".join(repo)}:pull"')
                    body = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}'
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                if "/blobs/" in self.path:
                    signature = secrets.token_hex(8)
                    proxy.signatures.add(signature)
                    self.send_response(307)
                    self.send_header("Location", f"http://{proxy.blob_host}/storage{self.path}?sig={signature}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                proxy.forward(self, self.path)

            def do_POST(self):
                proxy.requests.append("POST " + self.path)
                form = urllib.parse.parse_qs(self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode())
                ok = (self.path == "/token" and form.get("grant_type") == ["refresh_token"]
                      and form.get("refresh_token") == [proxy.refresh_token] and form.get("service") == ["imgfs-test"])
                if ok:
                    proxy.refresh_grants += 1
                    token = secrets.token_hex(16)
                    proxy.tokens.add(token)
                    self.send_response(200)
                    body = json.dumps({"access_token": token, "expires_in": proxy.token_expires}).encode()
                else:
                    self.send_response(401)
                    body = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad refresh token"}]}'
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        class Storage(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                proxy.blob_host_auth_headers.append(self.headers.get("Authorization"))
                path, _, query = self.path[len("/storage"):].partition("?sig=")
                if query not in proxy.signatures:
                    body = b"<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>"
                    self.send_response(403)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                proxy.storage_requests.append((path, self.headers.get("Range")))
                proxy.forward(self, path)

        self.front = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Front)
        self.storage = http.server.ThreadingHTTPServer(("127.0.0.2", 0), Storage)
        self.front_host = f"127.0.0.1:{self.front.server_address[1]}"
        self.blob_host = f"127.0.0.2:{self.storage.server_address[1]}"
        for server in (self.front, self.storage):
            threading.Thread(target=server.serve_forever, daemon=True).start()

    def token(self, handler):
        self.token_requests += 1
        want = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if handler.headers.get("Authorization") != want:
            handler.send_response(401)
            body = b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}'
        else:
            token = secrets.token_hex(16)
            self.tokens.add(token)
            handler.send_response(200)
            body = json.dumps({"token": token, "expires_in": self.token_expires}).encode()
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def expire_locations(self):
        self.signatures.clear()

    def forward(self, handler, path):
        headers = {"Accept": handler.headers.get("Accept", "*/*")}
        if handler.headers.get("Range"):
            headers["Range"] = handler.headers["Range"]
        req = urllib.request.Request(f"http://{self.upstream}{path}", headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                body, status, headers = r.read(), r.status, r.headers
        except urllib.error.HTTPError as e:
            body, status, headers = e.read(), e.code, e.headers
        handler.send_response(status)
        for h in ("Content-Type", "Docker-Content-Digest", "Content-Range"):
            if headers.get(h):
                handler.send_header(h, headers[h])
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)

    def stop(self):
        self.front.shutdown()
        self.storage.shutdown()
