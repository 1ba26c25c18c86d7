"""A stand-in for the Hugging Face hub on the loopback address: serves one
folder as repo `repo` (the model-info, tree and resolve endpoints that
huggingface_hub's snapshot_download uses)."""
import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


def serve(folder, repo):
    """Start the server in a thread; returns (server, its URL). server.shutdown() stops it."""
    folder = Path(folder)
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    sha = "0" * 40
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def _file(self, head):
            prefix = f"/{repo}/resolve/"
            rest = self.path.split("?")[0][len(prefix):]
            rel = rest.split("/", 1)[1]
            p = folder / rel
            if not p.is_file():
                self.send_response(404); self.end_headers(); return
            data = p.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
            self.send_header("X-Repo-Commit", sha)
            self.end_headers()
            if not head: self.wfile.write(data)
        def do_HEAD(self): self._file(True)
        def do_GET(self):
            if self.path.startswith(f"/api/models/{repo}/tree/"):
                body = json.dumps([{"type": "file", "path": f, "size": (folder / f).stat().st_size,
                                    "oid": hashlib.sha1((folder / f).read_bytes()).hexdigest()} for f in files]).encode()
                self.send_response(200); self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
            elif self.path.startswith(f"/api/models/{repo}"):
                body = json.dumps({"id": repo, "sha": sha, "siblings": [{"rfilename": f} for f in files]}).encode()
                self.send_response(200); self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body))); self.end_headers(); self.wfile.write(body)
            else:
                self._file(False)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"


def serve_static(folder):
    """A plain file server of `folder` on the loopback address (a download mirror):
    GET /<path> -> folder/<path>. Returns (server, its URL)."""
    folder = Path(folder)

    class H(BaseHTTPRequestHandler):
        def log_message(self, *a): pass
        def do_GET(self):
            p = folder / self.path.split("?")[0].lstrip("/")
            if not p.is_file():
                self.send_response(404); self.end_headers(); return
            data = p.read_bytes()
            self.send_response(200); self.send_header("Content-Length", str(len(data))); self.end_headers()
            self.wfile.write(data)
    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, f"http://127.0.0.1:{srv.server_address[1]}"
