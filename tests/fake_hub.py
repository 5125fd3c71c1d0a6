"""A fake Hugging Face Hub at the HTTP level, for the real `huggingface_hub` client.

Installed with `huggingface_hub.utils._http.set_client_factory` and an httpx2
`MockTransport` (respx does not hook huggingface_hub 2.x). It serves model repos for
downloads (repo info, tree listing, resolve HEAD/GET) and accepts uploads (create repo,
validate YAML, preupload: every file "regular", commit), records every request, and can
answer chosen routes with errors first (e.g. two 503s on commit).
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass, field
from urllib.parse import unquote

import httpx2

COMMIT = "a" * 40


@dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


@dataclass
class FakeHub:
    repos: dict[str, dict[str, bytes]] = field(default_factory=dict)  # repo id -> {path: content}
    fail: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))  # route -> statuses to answer first
    requests: list[Request] = field(default_factory=list)
    private: dict[str, bool] = field(default_factory=dict)  # repo id -> visibility set at creation
    commits: list[dict] = field(default_factory=list)  # {"repo", "revision", "header", "files": {path: bytes}}

    # ------------------------------------------------------------------ plumbing
    def install(self, monkeypatch, endpoint: str = "https://hub.test") -> None:
        from huggingface_hub.utils import _http

        monkeypatch.setenv("HF_ENDPOINT", endpoint)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
        monkeypatch.setenv("HF_HUB_DISABLE_UPDATE_CHECK", "1")  # the `hf` CLI would ask PyPI for a newer version
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        import huggingface_hub.constants as constants

        monkeypatch.setattr(constants, "ENDPOINT", endpoint)
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        monkeypatch.setattr(constants, "HF_HUB_DISABLE_UPDATE_CHECK", True)
        _http.set_client_factory(  # as the default factory, with our transport: offline mode and debug logging included
            lambda: httpx2.Client(
                transport=httpx2.MockTransport(self.handle),
                event_hooks={"request": [_http.hf_request_event_hook]},
                follow_redirects=True,
            )
        )
        _http.close_session()

    def paths(self, method: str | None = None, prefix: str = "") -> list[str]:
        return [r.path for r in self.requests if (method is None or r.method == method) and r.path.startswith(prefix)]

    def uploaded(self, repo: str) -> set[str]:
        """Every path committed to `repo`, over all its commits (a client may split a folder into several)."""
        return {path for commit in self.commits if commit["repo"] == repo for path in commit["files"]}

    def _json(self, status: int, payload) -> httpx2.Response:
        return httpx2.Response(status, json=payload)

    def _maybe_fail(self, route: str) -> httpx2.Response | None:
        """The next queued failure of `route`: an HTTP status, or 0 for a dropped connection."""
        if self.fail.get(route):
            status = self.fail[route].pop(0)
            if status == 0:
                raise httpx2.ConnectError("fake: connection refused")
            return self._json(status, {"error": f"fake {status}"})
        return None

    # ------------------------------------------------------------------ routes
    def handle(self, request: httpx2.Request) -> httpx2.Response:
        path = unquote(request.url.path)
        body = request.read() if request.method in ("POST", "PUT") else b""
        self.requests.append(Request(request.method, path, dict(request.headers), body))
        parts = path.strip("/").split("/")
        if path == "/api/repos/create":
            return self._maybe_fail("create") or self._create(json.loads(body))
        if path == "/api/validate-yaml":
            return self._json(200, {"errors": [], "warnings": []})
        if path.startswith("/api/agent-harnesses"):
            return self._json(200, {"standardEnvVars": [], "harnesses": {}})
        if parts[:2] == ["api", "models"]:
            repo = "/".join(parts[2:4])
            rest = parts[4:]
            if rest[:1] == ["revision"] or not rest:
                return self._maybe_fail("info") or self._info(repo)
            if rest[:1] == ["tree"]:
                return self._tree(repo)
            if rest[:1] == ["preupload"]:
                files = json.loads(body)["files"]
                return self._json(
                    200,
                    {
                        "files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files],
                        "commitOid": COMMIT,
                    },
                )
            if rest[:1] == ["commit"]:
                return self._maybe_fail("commit") or self._commit(repo, "/".join(rest[1:]), request, body)
            if rest[:1] in (["branch"], ["branches"]):
                return self._json(200, {})
        if len(parts) >= 4 and parts[2] == "resolve":
            repo, filename = "/".join(parts[:2]), "/".join(parts[4:])
            return self._maybe_fail("resolve") or self._file(request.method, repo, filename)
        return self._json(404, {"error": f"fake hub: no route for {request.method} {path}"})

    def _create(self, payload: dict) -> httpx2.Response:
        repo = f"{payload.get('organization') or 'user'}/{payload['name']}"
        if repo in self.repos:  # as the Hub: 409, which create_repo(exist_ok=True) accepts
            return self._json(409, {"error": "You already created this model repo", "url": f"https://hub.test/{repo}"})
        self.repos[repo] = {}
        self.private[repo] = payload.get("visibility") == "private"
        return self._json(200, {"url": f"https://hub.test/{repo}", "name": repo})

    def _info(self, repo: str) -> httpx2.Response:
        if repo not in self.repos:
            return httpx2.Response(404, json={"error": "Repository not found"}, headers={"X-Error-Code": "RepoNotFound"})
        siblings = [{"rfilename": name} for name in sorted(self.repos[repo])]
        private = self.private.get(repo, False)
        return self._json(200, {"id": repo, "modelId": repo, "sha": COMMIT, "siblings": siblings, "private": private})

    def _tree(self, repo: str) -> httpx2.Response:
        entries = []
        for name, content in sorted(self.repos[repo].items()):
            oid = hashlib.sha1(content).hexdigest()
            entries.append({"type": "file", "path": name, "size": len(content), "oid": oid})
        return self._json(200, entries)

    def _file(self, method: str, repo: str, filename: str) -> httpx2.Response:
        content = self.repos.get(repo, {}).get(filename)
        if content is None:
            return httpx2.Response(404, json={"error": "Entry not found"}, headers={"X-Error-Code": "EntryNotFound"})
        etag = hashlib.sha1(content).hexdigest()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag}"', "Content-Length": str(len(content))}
        return httpx2.Response(200, headers=headers, content=b"" if method == "HEAD" else content)

    def _commit(self, repo: str, revision: str, request: httpx2.Request, body: bytes) -> httpx2.Response:
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line["value"] for line in lines if line["key"] == "header")
        files = {line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines if line["key"] == "file"}
        self.commits.append({"repo": repo, "revision": revision, "header": header, "files": files})
        self.repos.setdefault(repo, {}).update(files)
        return self._json(200, {"commitUrl": f"https://hub.test/{repo}/commit/{COMMIT}", "commitOid": COMMIT})
