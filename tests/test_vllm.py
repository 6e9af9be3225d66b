"""GUIDE served through vLLM: one live local server per test session (``guide serve``'s command line).

Runs where vLLM is importable (the vLLM environment, ``scripts/setup-vllm.sh``); skipped elsewhere.
The exactness test computes its references with GuideEngine and plain transformers in a subprocess
of this same environment, while the server answers.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

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


def _stop(process: subprocess.Popen) -> None:
    """Stop a server: SIGTERM, then SIGKILL if it has not exited after 30 s."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()


def _wait_until_healthy(process: subprocess.Popen, base: str, log: Path, limit_s: float, what: str) -> None:
    """Return once ``base``/health answers 200; fail the test (with the log's end) if the server exits or
    ``limit_s`` seconds pass first."""
    deadline = time.monotonic() + limit_s
    while True:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not start in {limit_s} s:\n{log.read_text()[-3000:]}")
        time.sleep(2)


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    """``guide serve`` (the installed command) on the embedded model, fp32, started once per session."""
    port = _free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    extra = ["--dtype", "float32", "--enforce-eager", "--max-model-len", "2048", "--gpu-memory-utilization", "0.3"]
    extra += ["--api-key", API_KEY, "--enable-prefix-caching", "--disable-uvicorn-access-log"]
    command = [str(Path(sys.executable).with_name("guide")), "serve", "--port", str(port), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(process, base, log, SERVER_START_S, "the vLLM server")
        yield base
    finally:
        _stop(process)


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
    with pytest.raises(openai.BadRequestError, match="contrast is an option of GuideEngine"):
        _chat(client, "<!->a<-!> b", contrast="auto")
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


@pytest.fixture(scope="session")
def families(tmp_path_factory):
    """Each family's check (tests/vllm_families.py), all in one subprocess with vLLM's engine in-process."""
    from guide_integrations.vllm.model_files import model_folder

    script = Path(__file__).with_name("vllm_families.py")
    root = tmp_path_factory.mktemp("families")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    run = subprocess.run(
        [sys.executable, str(script), str(root), model_folder()], capture_output=True, text=True, env=env, timeout=600
    )
    if run.returncode:
        pytest.fail(f"tests/vllm_families.py exited with {run.returncode}:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


FAMILIES = ["MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Gemma3ForCausalLM"]


@pytest.mark.parametrize("architecture", FAMILIES)
def test_each_family_matches_a_transformers_reference_with_the_bias(families, architecture):
    """Greedy log-probs of a tiny random model served with GUIDE equal explicit biased attention's."""
    result = families[architecture]
    assert result["emphasized_tokens"] >= 4
    assert result["max_abs_error"] < 1e-4
    assert result["max_abs_delta_effect"] > 0.1  # Δ moves this model's log-probs: a dropped Δ would fail


REFERENCE_CODE = r"""
import json, sys
import torch
from guide_engine import GuideEngine, strip_tags
from guide_integrations.vllm.model_files import model_folder
from transformers import AutoModelForCausalLM, AutoTokenizer
prompts, tokens = json.load(sys.stdin)
folder = model_folder()  # the served weights, as safetensors (loads in a second; the GGUF takes ~15 s)
engine = GuideEngine.from_pretrained(folder)
guided = [engine.generate(p, max_new_tokens=tokens, delta_mid=2.0).token_ids for p in prompts]
tok = AutoTokenizer.from_pretrained(folder)
model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
plain = []
for p in prompts:
    ids = tok.apply_chat_template([{"role": "user", "content": strip_tags(p)}],
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


def test_greedy_agreement_with_the_engine_is_at_least_plain_vllm_with_transformers(client, tmp_path):
    tokens = 32
    # The references (GuideEngine, plain transformers) compute while vLLM answers all 40 requests at once.
    request = tmp_path / "reference.json"
    request.write_text(json.dumps([EXACTNESS_PROMPTS, tokens]))
    reference = subprocess.Popen(
        [sys.executable, "-c", REFERENCE_CODE],
        stdin=request.open(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    plain_prompts = [p.replace("<!!->", "").replace("<-!!>", "") for p in EXACTNESS_PROMPTS]
    with ThreadPoolExecutor(len(EXACTNESS_PROMPTS)) as pool:
        guided_replies = pool.map(lambda p: _chat(client, p, max_tokens=tokens, delta_mid=2.0), EXACTNESS_PROMPTS)
        plain_replies = pool.map(lambda p: _chat(client, p, max_tokens=tokens), plain_prompts)
        guided = [r.token_ids for r in guided_replies]
        plain = [r.token_ids for r in plain_replies]
    out, err = reference.communicate(timeout=600)
    assert reference.returncode == 0, err[-3000:]
    expected = json.loads(out.strip().splitlines()[-1])
    guide_rate = _agreement(guided, expected["guided"])
    plain_rate = _agreement(plain, expected["plain"])
    print(
        f"greedy agreement over {len(EXACTNESS_PROMPTS)} prompts x {tokens} tokens: "
        f"vLLM-GUIDE vs GuideEngine {guide_rate:.3f}, plain vLLM vs transformers {plain_rate:.3f}"
    )
    assert guide_rate >= plain_rate - 1e-9


README_KEY = "sk-guide-readme-7c41e9"
README_START_S = 900  # no --enforce-eager: vLLM compiles the model with inductor first


def _readme_serve_command(port: int) -> tuple[list[str], dict[str, str]]:
    """The README's ``guide serve`` line (after ``&&``): its arguments, with ``port`` and the key, and its variables."""
    readme = Path(__file__).parents[1] / "README.md"
    [line] = [line for line in readme.read_text().splitlines() if ".venv-vllm/bin/guide serve" in line]
    words = shlex.split(line.split("&&")[-1].replace('"$KEY"', README_KEY))
    variables = dict(word.split("=", 1) for word in words if "=" in word and not word.startswith("-"))
    command = words[len(variables) :]
    assert command[:2] == [".venv-vllm/bin/guide", "serve"]
    assert command[2:] == ["--port", "8000"]  # the test below is the README's line: change both together
    return [str(Path(sys.executable).with_name("guide")), "serve", "--port", str(port)], variables


@pytest.fixture(scope="class")
def readme(tmp_path_factory):
    """The README's server, its log and its process: started once for TestTheReadmeCommand, stopped after it."""
    port = _free_port()
    log = tmp_path_factory.mktemp("readme") / "server.log"
    command, variables = _readme_serve_command(port)
    assert variables == {"VLLM_API_KEY": README_KEY}
    env = {k: v for k, v in os.environ.items() if k not in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_API_KEY")}
    env = {**env, **variables, "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_healthy(process, base, log, README_START_S, "guide serve")
        print(f"the README's guide serve started in {time.monotonic() - started:.0f} s; log: {log}")
        yield base, log, process
    finally:
        _stop(process)


class TestTheReadmeCommand:
    """The README's ``VLLM_API_KEY="$KEY" guide serve --port 8000`` (on a free port), no other flag or variable."""

    def test_it_serves_the_weights_fp32_in_a_kv_cache_that_fits(self, readme):
        base, log, _ = readme
        openai = pytest.importorskip("openai")
        client = openai.OpenAI(base_url=base + "/v1", api_key=README_KEY)
        assert _chat(client, "<!!->Answer in one word.<-!!> What color is snow?", delta_mid=2.0).message.content
        text = log.read_text()
        [command] = [line for line in text.splitlines() if line.startswith("guide serve: ") and " -m " in line]
        assert " --dtype float32 " in command
        assert " --kv-cache-memory-bytes " in command
        assert "GiB for KV cache" in text  # vLLM's line for an explicit budget
        assert "Explicitly set" in text
        assert "Downcasting" not in text
        # issue 29: the padding's price, in one line at start (30 layers × K and V × 3 KV heads × 4 bytes)
        price = (
            "GUIDE attention heads: head size 64 → 80 on CPU_ATTN; KV cache 57600 bytes per token against 46080 stock"
        )
        assert price in text
        assert "Attempted to load weight" not in text

    def test_the_key_is_required_and_never_shown(self, readme):
        psutil = pytest.importorskip("psutil")
        base, log, process = readme

        def status(key):
            request = urllib.request.Request(base + "/v1/models", headers={"Authorization": f"Bearer {key}"})
            try:
                with urllib.request.urlopen(request) as reply:
                    return reply.status
            except urllib.error.HTTPError as error:
                return error.code

        assert status("wrong") == 401
        assert status(README_KEY) == 200
        text = log.read_text()
        assert "VLLM_API_KEY=*** python -m vllm.entrypoints.openai.api_server" in text
        assert README_KEY not in text
        server = psutil.Process(process.pid)  # guide serve became the API server (same pid)
        processes = [server, *server.children(recursive=True)]
        assert len(processes) >= 2  # the API server and vLLM's engine core at least
        for each in processes:
            assert README_KEY not in " ".join(each.cmdline())

    def test_delta_influence_biases_the_influence_span_as_delta_mid_biases_emphasis(self, readme):
        base, _, _ = readme
        openai = pytest.importorskip("openai")
        client = openai.OpenAI(base_url=base + "/v1", api_key=README_KEY)
        plain = _chat(client, "Write one sentence about cats and dogs.")
        unbiased = _chat(client, "Write one sentence about cats and <?->dogs<-?>.")  # delta_influence defaults to 0
        influence = _chat(client, "Write one sentence about cats and <?->dogs<-?>.", delta_influence=-5)
        emphasis = _chat(client, "Write one sentence about cats and <!!->dogs<-!!>.", delta_mid=-5)
        assert unbiased.token_ids == plain.token_ids
        assert influence.token_ids == emphasis.token_ids
        assert influence.token_ids != plain.token_ids
        with pytest.raises(openai.BadRequestError, match="metric is an option of GuideEngine"):
            _chat(client, "<?->a<-?> b", metric="influence")
