"""
A small client for OpenAI-compatible HTTP servers (vLLM, TGI, llama.cpp, a hosted API), standard
library only: the teacher of the data recipe (recipe.py) and the server engine of the inference loop
speak to their model through it.

The authors evaluated through a text-generation server and built their data with GPT-4 behind an
API (docs/method.md §2, §4); both are one JSON request and one JSON reply:

    server = Server("http://127.0.0.1:8000")              # "/v1" may be given or not
    server.complete({"model": "m", "prompt": "1 + 1 =", "max_tokens": 4}, what="problem 7")
    server.chat({"model": "m", "messages": [{"role": "user", "content": "Hi"}]}, what="p7")

Failures, as a long run needs them:
  * 429 (too many requests), 5xx and time-outs are retried after 1, 2, 4, ... s (backoff * 2^try,
    at most max_backoff; a Retry-After header is honoured up to that), `retries` times; then one
    ServerError whose message is one line naming what was asked (`what`: the problem) and the
    status;
  * other 4xx are not retried (the request itself is wrong: retrying cannot help);
  * an unreachable server (refused, unknown host) is retried the same way, then ServerError with
    fatal=True, as are 401 / 403 / 404: every other request would fail the same way, so the caller
    stops the whole run with that one line instead of failing problem after problem.

The API key: read from an environment variable (api_key_env, default OPENAI_API_KEY; none set: no
key is sent), sent as "Authorization: Bearer ..." only to the URL given: redirects are not followed
(urllib would forward the header to wherever the redirect points) and proxy settings of the
environment are ignored. It is kept out of repr() and of every error message: a server that echoes
it back (some do, in "invalid key" errors) has it replaced by "***".
"""
import dataclasses
import http.client
import json
import os
import socket
import threading
import time
import urllib.error
import urllib.request

RETRY_STATUS = {429, 500, 502, 503, 504}
FATAL_STATUS = {401, 403, 404}


class ServerError(RuntimeError):
    """One line: what was asked, and what went wrong. status: the HTTP status (None: no reply).
    fatal: every later request would fail the same way (stop the run)."""

    def __init__(self, message, status=None, fatal=False):
        super().__init__(message)
        self.status = status
        self.fatal = fatal


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None          # the 3xx becomes an HTTPError: the key goes nowhere else


@dataclasses.dataclass
class Server:
    """An OpenAI-compatible endpoint. url: its base (http://host:port, with or without /v1)."""
    url: str
    api_key_env: str = "OPENAI_API_KEY"
    timeout: float = 600.0        # seconds a reply may keep us waiting (per socket read)
    retries: int = 5              # tries after the first, on 429 / 5xx / time-outs / no server
    backoff: float = 1.0          # seconds before the first retry, doubled each time
    max_backoff: float = 60.0

    def __post_init__(self):
        base = self.url.rstrip("/")
        if not base.startswith(("http://", "https://")):
            raise ValueError(f"server URL must start with http:// or https://: {self.url!r}")
        self.base = base.removesuffix("/v1")
        self._opener = urllib.request.build_opener(_NoRedirect(),
                                                   urllib.request.ProxyHandler({}))
        self._lock = threading.Lock()
        self.stats = {"requests": 0, "retries": 0}    # shared by the caller's threads

    def __repr__(self):        # never the key
        return f"Server({self.base!r}, api_key_env={self.api_key_env!r})"

    def _key(self):
        return os.environ.get(self.api_key_env) or None

    def scrub(self, text: str) -> str:
        """text with the API key, wherever it appears, replaced by ***."""
        key = self._key()
        return text.replace(key, "***") if key else text

    def complete(self, payload: dict, what: str = "request") -> dict:
        """POST payload to /v1/completions; the decoded JSON reply."""
        return self.post("/v1/completions", payload, what)

    def chat(self, payload: dict, what: str = "request") -> dict:
        """POST payload to /v1/chat/completions; the decoded JSON reply."""
        return self.post("/v1/chat/completions", payload, what)

    def post(self, path: str, payload: dict, what: str = "request") -> dict:
        """POST one JSON request, retrying as the module docstring says. Raises ServerError."""
        url = self.base + path
        data = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if self._key():
            headers["Authorization"] = f"Bearer {self._key()}"
        for attempt in range(self.retries + 1):
            with self._lock:
                self.stats["requests"] += 1
                self.stats["retries"] += attempt > 0
            wait = None         # seconds the server asked us to wait (Retry-After)
            unreachable = False
            try:
                request = urllib.request.Request(url, data, headers, method="POST")
                with self._opener.open(request, timeout=self.timeout) as reply:
                    body = reply.read()
                try:
                    return json.loads(body)
                except ValueError:
                    raise ServerError(f"{what}: {url} replied with something that is not JSON: "
                                      f"{self.scrub(body[:120].decode(errors='replace'))!r}")
            except urllib.error.HTTPError as e:
                text = self.scrub(e.read()[:200].decode(errors="replace")).replace("\n", " ")
                problem = f"{what}: {url} answered HTTP {e.code} {e.reason}: {text}".rstrip(": ")
                if e.code not in RETRY_STATUS:
                    raise ServerError(problem, e.code, e.code in FATAL_STATUS) from None
                status = e.code
                wait = _retry_after(e.headers.get("Retry-After"))
            except (TimeoutError, socket.timeout):
                problem, status = f"{what}: {url} did not answer within {self.timeout:g} s", None
            except urllib.error.URLError as e:
                if isinstance(e.reason, (TimeoutError, socket.timeout)):
                    problem = f"{what}: {url} did not answer within {self.timeout:g} s"
                else:
                    problem = f"{what}: server {self.base} unreachable ({e.reason})"
                    unreachable = True
                status = None
            except (http.client.HTTPException, ConnectionError) as e:  # dropped mid-reply
                problem, status = f"{what}: {url} broke off the reply ({type(e).__name__})", None
            if attempt == self.retries:
                break
            pause = min(self.max_backoff, self.backoff * 2 ** attempt)
            time.sleep(min(self.max_backoff, max(pause, wait or 0)))
        raise ServerError(f"{self.scrub(problem)} (after {self.retries + 1} tries)", status,
                          fatal=unreachable)


def _retry_after(value):
    """A Retry-After header's seconds (None: absent or an HTTP date, which we do not parse)."""
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        return None


def add_server_args(parser, key_help="the API key's environment variable"):
    """--api-key-env, --request-timeout, --retries: the Server's settings as flags."""
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY",
                        help=f"{key_help} (default: OPENAI_API_KEY; unset: no key is sent)")
    parser.add_argument("--request-timeout", type=float, default=600.0,
                        help="seconds a server reply may take before it is retried (default 600)")
    parser.add_argument("--retries", type=int, default=5,
                        help="retries of a request on 429 / 5xx / time-out (default 5)")


def server_from_args(args) -> Server:
    return Server(args.server, api_key_env=args.api_key_env, timeout=args.request_timeout,
                  retries=args.retries)
