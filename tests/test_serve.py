"""`spectune serve` as users meet it: a real server process on loopback, the official `openai`
client, curl-like raw requests for the refusals, fine-tuned classify / NER runs, metrics, a full
queue, and a graceful shutdown with a request in flight."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import httpx
import openai
import pytest
import tiny

from spectune.config import TrainConfig, build
from spectune.train import train

KEY = "test-key-123"


class Server:
    def __init__(self, *args, env=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "spectune.cli", "serve", "--port", "0", *args],
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()
        deadline = time.time() + 120
        while time.time() < deadline and not any("ready:" in x for x in self.lines):
            if self.proc.poll() is not None:
                raise RuntimeError("server exited:\n" + "".join(self.lines))
            time.sleep(0.1)
        found = [re.search(r"http://[\d.]+:(\d+)", x) for x in self.lines]
        self.url = next(f"http://127.0.0.1:{m.group(1)}" for m in found if m)

    def _read(self):
        for line in self.proc.stderr:
            self.lines.append(line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


def train_run(tmp, base, task, data):
    cfg = build(TrainConfig, {"task": task, "model": str(base), "train": str(data["train"]), "out": str(tmp / task),
                              "epochs": 1, "batch_size": 16, "lr": 1e-3, "quiet": True})
    train(cfg)
    return tmp / task


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_llama_dir, tiny_bert_dir):
    tmp = tmp_path_factory.mktemp("serve")
    (tmp / "cls").mkdir()
    (tmp / "ner").mkdir()
    cls = train_run(tmp, tiny_bert_dir, "classify", tiny.write_classify(tmp / "cls"))
    ner = train_run(tmp, tiny_bert_dir, "ner", tiny.write_ner(tmp / "ner"))
    env = {**os.environ, "SPECTUNE_API_KEY": KEY}
    s = Server("--model", str(tiny_llama_dir), "--name", "tiny", "--draft", "lookup", "--task-model",
               f"sentiment={cls}", "--task-model", f"entities={ner}", "--max-tokens", "64",
               "--max-prompt-tokens", "120", "--max-body-bytes", "4096", env=env)
    yield s
    s.stop()
    assert s.proc.returncode == 0


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key=KEY, max_retries=0)


def post(server, path, body, key=KEY, **kw):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = body if isinstance(body, bytes | str) else json.dumps(body)
    return httpx.post(server.url + path, content=data, headers={"Content-Type": "application/json", **headers},
                      timeout=60, **kw)


CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me about the sea"}]


def test_openai_client_chat_stream_completion_models(client):
    r = client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=24, temperature=0)
    text = r.choices[0].message.content
    assert r.object == "chat.completion" and r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 5
    assert r.usage.model_extra["drafted_tokens"] >= r.usage.model_extra["accepted_tokens"] >= 0
    chunks = list(client.chat.completions.create(model="tiny", messages=CHAT, max_tokens=24, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    c = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=10, temperature=0)
    assert c.object == "text_completion" and c.usage.completion_tokens <= 10
    streamed = "".join(x.choices[0].text for x in client.completions.create(
        model="tiny", prompt="The quick brown fox", max_tokens=10, temperature=0, stream=True))
    assert streamed == c.choices[0].text
    seeded = [client.completions.create(model="tiny", prompt="Once", max_tokens=12, temperature=1.0,
                                        seed=7).choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1]
    assert {m.id for m in client.models.list()} == {"tiny", "sentiment", "entities"}


def test_stop_strings_and_concurrent_requests_batched(client, server):
    full = client.completions.create(model="tiny", prompt="Hello there", max_tokens=30, temperature=0).choices[0].text
    stop = full[5:8]
    cut = client.completions.create(model="tiny", prompt="Hello there", max_tokens=30, temperature=0, stop=[stop])
    assert cut.choices[0].text == full[: full.index(stop)] and cut.choices[0].finish_reason == "stop"
    prompts = [f"Story number {i}:" for i in range(6)]
    alone = [client.completions.create(model="tiny", prompt=p, max_tokens=20, temperature=0).choices[0].text
             for p in prompts]
    results = [None] * 6

    def ask(i):
        results[i] = client.completions.create(model="tiny", prompt=prompts[i], max_tokens=20,
                                               temperature=0).choices[0].text

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == alone  # batched with each other, every answer is its own
    metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
    assert 'spectune_requests_total{endpoint="/v1/completions",status="200"}' in metrics
    assert "spectune_draft_tokens_total" in metrics and "spectune_tau_bucket" in metrics


def test_auth(server, client):
    assert httpx.get(server.url + "/health").json()["status"] == "ok"  # no key needed
    for key in (None, "wrong"):
        r = httpx.get(server.url + "/v1/models", headers={"Authorization": f"Bearer {key}"} if key else {})
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="nope", max_retries=0).models.list()
    assert len(client.models.list().data) == 3


@pytest.mark.parametrize("path, body, status, says", [
    ("/v1/chat/completions", b"{not json", 400, "invalid JSON"),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": "many"}, 400, "max_tokens"),
    ("/v1/chat/completions", {"model": "tiny", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": " "}]}, 400, "empty"),
    ("/v1/chat/completions", {"model": "gpt-4", "messages": CHAT}, 404, "not served here"),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "max_tokens": 65}, 400, "cap of 64"),
    ("/v1/chat/completions", {"model": "tiny", "messages": CHAT, "n": 2}, 400, "n"),
    ("/v1/completions", {"model": "tiny", "prompt": "word " * 35}, 400, "cap of 120"),
    ("/v1/completions", {"model": "tiny", "prompt": "word " * 300, "max_tokens": 5}, 400, "context"),
    ("/v1/completions", {"model": "tiny", "prompt": "x" * 5000}, 413, "4096 bytes"),
    ("/v1/completions", {"model": "/etc/passwd", "prompt": "hi"}, 404, "not served here"),
    ("/v1/classify", {"model": "entities", "input": ["a"]}, 404, "not a classify model"),
    ("/v1/ner", {"model": "sentiment", "input": "a b"}, 404, "not a ner model"),
])
def test_bad_requests_get_the_right_4xx_and_the_server_stays_up(server, path, body, status, says):
    r = post(server, path, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert says in err["message"] and err["type"]
    assert httpx.get(server.url + "/health").status_code == 200


def test_classify_and_ner_endpoints(server):
    r = post(server, "/v1/classify", {"model": "sentiment", "input": ["good movie", "bad day", "fine"]})
    assert r.status_code == 200
    data = r.json()["data"]
    assert [d["index"] for d in data] == [0, 1, 2]
    assert all(abs(sum(d["scores"].values()) - 1) < 1e-3 and d["label"] in d["scores"] for d in data)
    r = post(server, "/v1/ner", {"model": "entities", "input": "John lives in Paris"})
    assert r.status_code == 200
    for e in r.json()["data"][0]["entities"]:
        assert "John lives in Paris"[e["start"]:e["end"]] == e["text"]


def test_full_queue_answers_429_and_shutdown_finishes_in_flight(tiny_llama_dir):
    s = Server("--model", str(tiny_llama_dir), "--name", "tiny", "--max-batch", "1", "--max-queue", "1")
    try:
        statuses, answers = [], []

        def ask():
            r = post(s, "/v1/completions", {"model": "tiny", "prompt": "Go", "max_tokens": 200,
                                            "temperature": 0}, key=None)
            statuses.append(r.status_code)
            if r.status_code == 429:
                assert r.headers["Retry-After"] == "1" and r.json()["error"]["code"] == "queue_full"
            else:
                answers.append(r.json())

        threads = [threading.Thread(target=ask) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses.count(429) >= 1 and statuses.count(200) >= 2 and set(statuses) <= {200, 429}

        # SIGTERM while a streamed answer is being written: the client still gets all of it.
        got, done = [], threading.Event()

        def stream():
            with httpx.stream("POST", s.url + "/v1/completions", json={"model": "tiny", "prompt": "Go",
                              "max_tokens": 200, "temperature": 0, "stream": True}, timeout=60) as r:
                for line in r.iter_lines():
                    if line:
                        got.append(line)
                    if len(got) == 3:
                        done.set()
            done.set()

        t = threading.Thread(target=stream)
        t.start()
        done.wait(30)
        s.proc.send_signal(signal.SIGTERM)
        at_signal = len(got)
        t.join(60)
        assert at_signal < len(got) - 10  # the answer was still being written when the signal came
        assert s.proc.wait(60) == 0
        events = [json.loads(x[6:]) for x in got if x.startswith("data: {")]
        assert got[-1] == "data: [DONE]" and events[-1]["choices"][0]["finish_reason"] == "length"
        assert "".join(e["choices"][0]["text"] for e in events) == answers[0]["choices"][0]["text"]
    finally:
        s.stop()


def test_bad_setup_is_one_line_before_binding(tiny_llama_dir, tmp_path):
    r = subprocess.run([sys.executable, "-m", "spectune.cli", "serve", "--model", str(tiny_llama_dir),
                        "--task-model", f"x={tmp_path}"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "not a spectune run folder" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "spectune.cli", "serve", "--task-model", "oops"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "expected NAME=RUN_DIR" in r.stderr


def test_schemathesis_finds_no_server_error(server, tmp_path):
    """Property-based requests generated from the server's own OpenAPI schema (bounded): no 5xx."""
    exe = os.path.join(os.path.dirname(sys.executable), "schemathesis")
    r = subprocess.run([exe, "run", server.url + "/openapi.json", "--checks", "not_a_server_error", "-n", "8",
                        "--generation-deterministic", "-H", f"Authorization: Bearer {KEY}"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path)  # its cache stays out of the repo
    assert r.returncode == 0, r.stdout[-3000:]
    assert re.search(r"\d+ generated, \d+ passed", r.stdout)
    assert httpx.get(server.url + "/health").status_code == 200
