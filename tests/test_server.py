"""server_client.py against a stub OpenAI-compatible server on 127.0.0.1 (StubServer, in
tests/helpers.py: started in a thread; nothing leaves the machine): JSON in and out, the key only in
the Authorization header of the URL given, retries on 429 / 5xx / a hung request, then one line; an
unreachable server is one line. The inference loop behind a server: tests/test_serving.py."""
import json
import socket

import pytest

from helpers import KEY, StubServer, completion, fast, scripted  # test_recipe: KEY, StubServer
from plumbing.server_client import Server, ServerError


def test_posts_json_with_the_key_in_the_header_only(key):
    with StubServer(scripted((200, completion("2")))) as stub:
        reply = fast(stub.url + "/v1/", api_key_env="STUB_KEY").complete(
            {"model": "m", "prompt": "1 + 1 =", "max_tokens": 1})
    assert reply == completion("2")
    [(path, headers, body)] = stub.requests
    assert path == "/v1/completions"       # "/v1/" in the URL given is not doubled
    assert headers["Authorization"] == f"Bearer {key}"
    assert headers["Content-Type"] == "application/json"
    assert body == {"model": "m", "prompt": "1 + 1 =", "max_tokens": 1}
    assert key not in json.dumps(body) and key not in repr(fast(stub.url, api_key_env="STUB_KEY"))


def test_no_key_set_sends_no_header(monkeypatch):
    monkeypatch.delenv("NO_SUCH_KEY", raising=False)
    with StubServer(scripted((200, {"choices": []}))) as stub:
        fast(stub.url, api_key_env="NO_SUCH_KEY").chat({"messages": []})
    [(path, headers, _)] = stub.requests
    assert path == "/v1/chat/completions" and "Authorization" not in headers


def test_429_and_500_are_retried_then_answered():
    answers = scripted((429, {"error": "slow down"}), (500, {"error": "oops"}),
                       (200, completion("ok")))
    with StubServer(answers) as stub:
        server = fast(stub.url)
        assert server.complete({"prompt": "x"}) == completion("ok")
    assert len(stub.requests) == 3
    assert server.stats == {"requests": 3, "retries": 2}


def test_retry_after_is_honoured(monkeypatch):
    from plumbing import server_client
    slept = []
    monkeypatch.setattr(server_client.time, "sleep", slept.append)
    answers = scripted((429, {}, {"Retry-After": "2"}), (200, completion("ok")))
    with StubServer(answers) as stub:
        fast(stub.url).complete({"prompt": "x"})
    assert slept == [2.0]                  # the server's 2 s, not our 0.01 s


def test_persistent_5xx_ends_in_one_line_naming_the_problem_and_status(key):
    # the server echoes the key back, as some do in their errors: it is scrubbed
    with StubServer(scripted((503, {"error": f"overloaded, key {key}\nretry later"}))) as stub:
        with pytest.raises(ServerError) as caught:
            fast(stub.url, api_key_env="STUB_KEY").complete({"prompt": "x"}, what="problem gsm-7")
    message = str(caught.value)
    assert len(stub.requests) == 4         # the first try and 3 retries
    assert "\n" not in message and key not in message and "***" in message
    assert message.startswith("problem gsm-7: ") and "HTTP 503" in message
    assert "after 4 tries" in message
    assert caught.value.status == 503 and not caught.value.fatal


def test_a_hung_request_is_retried_then_reported():
    answers = scripted("hang", (200, completion("late but fine")))
    with StubServer(answers) as stub:
        assert fast(stub.url, timeout=0.3).complete({"prompt": "x"}) == completion(
            "late but fine")
    assert len(stub.requests) == 2
    with StubServer(scripted("hang")) as stub:
        with pytest.raises(ServerError) as caught:
            fast(stub.url, timeout=0.2, retries=1).complete({"prompt": "x"}, what="problem 3")
    assert len(stub.requests) == 2
    assert str(caught.value) == (f"problem 3: {stub.url}/v1/completions did not answer within "
                                 "0.2 s (after 2 tries)")


def test_other_4xx_are_not_retried_and_401_is_fatal():
    with StubServer(scripted((400, {"error": "prompt too long"}))) as stub:
        with pytest.raises(ServerError) as caught:
            fast(stub.url).complete({"prompt": "x"}, what="problem 9")
    assert len(stub.requests) == 1 and caught.value.status == 400 and not caught.value.fatal
    assert "prompt too long" in str(caught.value)
    with StubServer(scripted((401, {"error": "bad key"}))) as stub:
        with pytest.raises(ServerError) as caught:
            fast(stub.url).complete({"prompt": "x"})
    assert len(stub.requests) == 1 and caught.value.fatal


def test_an_unreachable_server_is_one_fatal_line():
    with socket.socket() as s:              # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerError) as caught:
        fast(f"http://127.0.0.1:{port}", retries=1).complete({"prompt": "x"}, what="problem 1")
    message = str(caught.value)
    assert caught.value.fatal and "\n" not in message
    assert message.startswith(f"problem 1: server http://127.0.0.1:{port} unreachable (")
    assert message.endswith("(after 2 tries)")


def test_redirects_are_not_followed_so_the_key_stays_with_the_url_given(key):
    with StubServer(scripted((200, completion("stolen")))) as elsewhere:
        moved = (307, {}, {"Location": elsewhere.url + "/v1/completions"})
        with StubServer(scripted(moved)) as stub:
            with pytest.raises(ServerError) as caught:
                fast(stub.url, api_key_env="STUB_KEY").complete({"prompt": "x"})
    assert elsewhere.requests == [] and caught.value.status == 307


def test_a_reply_that_is_not_json_is_one_line():
    with StubServer(scripted((200, b"<html>Bad Gateway</html>"))) as stub:
        with pytest.raises(ServerError) as caught:
            fast(stub.url).complete({}, what="problem 4")
    assert str(caught.value) == (f"problem 4: {stub.url}/v1/completions replied with something "
                                 "that is not JSON: '<html>Bad Gateway</html>'")
    with pytest.raises(ValueError, match="http:// or https://"):
        Server("127.0.0.1:8000")
