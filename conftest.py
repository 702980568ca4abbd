"""Shared test fixtures and helpers (for tests/ and plugins/*/tests): a tiny random model with a
real tokenizer, mock plugins that register it, the standard conversations, rendering through
`sdk template render`, the trained tokens of an encoding, and train-then-reload on a tiny model;
for the remote-code families converted on load (sdk.models.native): a module's own conversion
cache, the converted model as load_model loads it, `sdk sft` on an official checkpoint, and the
LoRA round trip a user makes (train, infer, export merged, push, infer from the pushed copy)."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from click.testing import CliRunner

from sdk.cli import cli
from sdk.templates.engine import IGNORE_INDEX

REPO = Path(__file__).resolve().parent
SHARED = REPO.parent / "shared"
TOKENIZERS = SHARED / "data" / "tokenizers"
# The official code and real tokenizers of the remote-code families (README inside).
REMOTE_CODE = SHARED / "data" / "remote_code"
TINY_MODEL_TYPE = "tiny-qwen2-chat"

# The standard conversations that the plugin suites render and encode; a suite keeps its own
# extra cases and picks the ones its format supports.
CONVERSATIONS = {
    "single turn": [{"role": "user", "content": "Who are you?"}],
    "with system": [{"role": "system", "content": "You are Ferret."},
                    {"role": "user", "content": "Who are you?"}],
    "multi turn": [{"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "Tell me a joke."},
                   {"role": "assistant", "content": "Why did the LLM cross the road?"}],
    "multi turn with system": [{"role": "system", "content": "You are Ferret."},
                               {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello!"},
                               {"role": "user", "content": "Who are you?"}],
    "chinese": [{"role": "system", "content": "你是一个诗人。"},
                {"role": "user", "content": "床前明月光"},
                {"role": "assistant", "content": "疑是地上霜。"}],
}
# A second Chinese turn, for suites that train two replies of the "chinese" conversation.
# The conversation of llama.cpp's tests/test-chat-template.cpp, whose expected outputs for many
# official templates the family tests quote.
LLAMA_CPP_CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant"},
    {"role": "user", "content": "Hello"},
    {"role": "assistant", "content": "Hi there"},
    {"role": "user", "content": "Who are you"},
    {"role": "assistant", "content": "   I am an assistant   "},
    {"role": "user", "content": "Another question"},
]

CHINESE_SECOND_TURN = [{"role": "user", "content": "举头望明月"},
                       {"role": "assistant", "content": "低头思故乡。"}]
# The size of the tiny random models that the training tests build (a config's keyword arguments).
TINY_SIZE = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512)


def save_tiny_model(model_class, config_class, tokenizer, folder: Path, **settings) -> Path:
    """Save a tiny random model (seed 0, TINY_SIZE unless overridden) and `tokenizer`."""
    import torch

    torch.manual_seed(0)
    config = config_class(**{"vocab_size": len(tokenizer), **TINY_SIZE, **settings})
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return Path(folder)


# Text on which a converted tokenizer must give the official tokenizer's ids: English, Chinese,
# numbers, whitespace runs, code, rare characters (byte fallback), mixed scripts.
TOKENIZER_CORPUS = [
    "Hello world", "你好, world", "  leading spaces", "trailing   ", "a    b     c",
    "tabs\tand\nnewlines\n\n\n x", "   \n   \n", " ", "\n", "numbers 1234567890 3.14159 -42",
    "混合 English 和中文 text，标点！“引号”", "床前明月光，疑是地上霜。举头望明月，低头思故乡。",
    "def f(x):\n    return x**2  # square\n", "ÀÉÎõü ñ ß Ωμέγα кириллица",
    "日本語とカタカナ 한국어", "emoji 😀 🚀 and rare 𠮷 𝔘𝔫𝔦", "I'm, you're, it's, they'll, we'd",
    "<html><body>x</body></html>",
]


def official_module(folder: Path, name: str):
    """The official remote-code module ``name`` (e.g. "modeling_qwen") of ``folder``, imported
    as a package so that its relative imports work, without transformers' dynamic-module
    machinery (which imports every package the file names). Test-only: the reference that a
    native conversion is compared with; a family's tests patch what transformers 5 broke."""
    import importlib
    import importlib.util
    import sys

    package = "official_" + "".join(c if c.isalnum() else "_" for c in folder.name)
    if package not in sys.modules:
        spec = importlib.util.spec_from_loader(package, loader=None, is_package=True)
        module = importlib.util.module_from_spec(spec)
        module.__path__ = [str(folder)]
        sys.modules[package] = module
    return importlib.import_module(f"{package}.{name}")


def randomize(model, seed: int = 0) -> None:
    """Fill every parameter with seeded random values (norm weights near 1): some official
    classes leave weights uninitialised (torch.empty) when built from a config."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float32)
            value = 1 + 0.1 * noise if parameter.dim() == 1 and "norm" in name.lower() \
                else 0.02 * noise
            parameter.copy_(value.to(parameter.dtype))


def save_official_checkpoint(source: Path, destination: Path, config: dict, model,
                             weights: str = "model.safetensors") -> Path:
    """A tiny checkpoint in the official layout: the files of ``source`` (code, tokenizer,
    generation config), ``config`` as config.json, and ``model``'s state dict under its
    official names, as safetensors or (``weights`` ending in .bin) a PyTorch pickle."""
    import shutil

    import torch

    destination.mkdir(parents=True, exist_ok=True)
    for file in source.iterdir():
        if file.is_file() and file.suffix not in (".pdf",):
            shutil.copy(file, destination / file.name)
    (destination / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    if weights.endswith(".bin"):
        torch.save(state, destination / weights)
    else:
        from safetensors.torch import save_file

        save_file(state, str(destination / weights), metadata={"format": "pt"})
    return destination


def trained_text(tokenizer, input_ids, labels) -> str:
    """The tokens that carry loss (label != -100), decoded together."""
    return tokenizer.decode([i for i, label in zip(input_ids, labels, strict=True)
                             if label != IGNORE_INDEX])


def run_folders(output: Path, model_type: str = TINY_MODEL_TYPE) -> set[Path]:
    """The run folders of ``model_type`` (the tiny model type unless given) under ``output``."""
    return set((output / model_type).glob("v*-*"))


def only_run(output: Path, model_type: str = TINY_MODEL_TYPE) -> Path:
    """The one run folder of ``model_type`` (the tiny model type unless given) under ``output``."""
    runs = run_folders(output, model_type)
    assert len(runs) == 1, runs
    return next(iter(runs))


def folder_digest(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with the hash of its bytes: compare the
    digests before and after a command to prove it changed nothing there."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


@contextmanager
def _without_file_capabilities() -> Iterator[None]:
    """As root, clear CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from this thread's effective
    capabilities for the block (Linux keeps them per thread; they stay permitted, so they come
    back): file permissions then bind as for any user. Elsewhere, nothing to do."""
    if os.geteuid() != 0 or not sys.platform.startswith("linux"):
        yield
        return
    libc = ctypes.CDLL(None, use_errno=True)
    header, data = _CapHeader(0x20080522, 0), (_CapData * 2)()  # _LINUX_CAPABILITY_VERSION_3
    if libc.capget(ctypes.byref(header), data) != 0:
        pytest.skip("cannot read this thread's capabilities")
    effective = data[0].effective
    data[0].effective &= ~0b110  # bits 1 and 2
    if libc.capset(ctypes.byref(header), data) != 0:
        pytest.skip("cannot drop CAP_DAC_OVERRIDE: file permissions do not bind for root here")
    try:
        yield
    finally:
        data[0].effective = effective
        libc.capset(ctypes.byref(header), data)


@pytest.fixture
def permissions_bind() -> Iterator[None]:
    """While the test runs, chmod binds in this thread as it does for a user, root included
    (CI runs as root): a file without read permission cannot be read, a folder without write
    permission cannot be written. Skips only where that cannot be had."""
    with _without_file_capabilities(), tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"  # not in tmp_path, which folder_digest reads
        probe.write_bytes(b"")
        probe.chmod(0)
        try:
            probe.read_bytes()
        except PermissionError:
            pass
        else:
            pytest.skip("a file without read permission is still readable here")
        yield


@pytest.fixture(scope="session")
def finished_lora_run(tiny_plugin_file, tmp_path_factory) -> Path:
    """A finished `sdk sft` LoRA run of the tiny model type (2 steps, checkpoint-1 and
    checkpoint-2, logging.jsonl), trained once per session. Never change it: take
    `lora_run_copy` to damage a run."""
    folder = tmp_path_factory.mktemp("finished-lora-run")
    data = folder / "identity.jsonl"
    data.write_text("".join(json.dumps({"messages": [
        {"role": "user", "content": question},
        {"role": "assistant", "content": "I am Tiny, made by the tests."}]}) + "\n"
        for question in ["Who are you?", "What is your name?", "Introduce yourself."]))
    result = invoke_sdk("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                        "--dataset", data, "--max-steps", "2", "--save-steps", "1",
                        "--batch-size", "2", "--output-dir", folder / "output")
    assert result.exit_code == 0, result.output
    return only_run(folder / "output")


@pytest.fixture
def lora_run_copy(finished_lora_run, tmp_path) -> Path:
    """A copy of finished_lora_run of this test's own, to damage."""
    return Path(shutil.copytree(finished_lora_run, tmp_path / "run"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama with random weights and the real Qwen2 tokenizer (ChatML tokens)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2")
    return save_tiny_model(LlamaForCausalLM, LlamaConfig, tokenizer,
                           tmp_path_factory.mktemp("tiny-model"), tie_word_embeddings=True,
                           eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                           pad_token_id=tokenizer.pad_token_id)


@pytest.fixture(scope="session")
def tiny_model_64(tmp_path_factory) -> Path:
    """Like tiny_model_dir, 64 wide: 4-bit quantization works in blocks of 64 weights."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(TOKENIZERS / "qwen2")
    return save_tiny_model(LlamaForCausalLM, LlamaConfig, tokenizer,
                           tmp_path_factory.mktemp("tiny-64"), hidden_size=64,
                           intermediate_size=128, tie_word_embeddings=True,
                           pad_token_id=tokenizer.pad_token_id)


@pytest.fixture(scope="session")
def tiny_plugin_file(tiny_model_dir, tmp_path_factory) -> Path:
    """A plugin file, as a third party would write it, registering the tiny model type."""
    path = tmp_path_factory.mktemp("plugins") / "tiny_plugin.py"
    path.write_text(textwrap.dedent(f"""
        from sdk import hookimpl
        from sdk.specs import ModelSpec

        def load(spec, options):
            from sdk.models.loader import load_pretrained
            return load_pretrained(options.model_dir or {str(tiny_model_dir)!r}, options)

        @hookimpl
        def register_models(register):
            register(ModelSpec(model_type={TINY_MODEL_TYPE!r}, family="tiny",
                               template="chatml", loader=load))
    """))
    return path


@pytest.fixture(scope="session")
def glaive_conversations() -> list:
    """LLaMA-Factory's glaive_toolcall_en_demo (tests/data/llama_factory) as sdk reads it: the
    first row with tool schemas, calls and results, the second with none of them."""
    from types import SimpleNamespace

    from sdk.data.conversations import load_conversations
    from sdk.plugins import load_plugins

    rows = load_conversations(["glaive_toolcall_en_demo"], load_plugins().registry,
                              SimpleNamespace(dataset_info=str(REPO / "tests" / "data" /
                                                               "llama_factory")))
    assert rows[0][0].get("tools") and not rows[1][0].get("tools")
    return rows


@pytest.fixture
def plugin_set(tiny_plugin_file):
    """Built-ins, installed plugins and the tiny model plugin, as `sdk --plugin` loads them."""
    from sdk.plugins import load_plugins

    return load_plugins([str(tiny_plugin_file)])


def invoke_sdk(*args: Any, input: str | None = None) -> Any:
    """Run `sdk ARGS...` in-process; returns the click Result (stdout and stderr apart)."""
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, prog_name="sdk",
                              catch_exceptions=False)


@pytest.fixture
def run_cli():
    """``invoke_sdk``, for a test."""
    return invoke_sdk


@pytest.fixture
def refused_sft(run_cli, tiny_plugin_file, identity_data, tmp_path):
    """`sdk sft` on the tiny model type with extra flags, expected to stop with a message and
    no traceback; returns its output."""
    def run(*flags):
        result = run_cli("--plugin", tiny_plugin_file, "sft", "--model-type", TINY_MODEL_TYPE,
                         "--dataset", identity_data, "--max-steps", "1", "--output-dir",
                         tmp_path / "out", *flags)
        assert result.exit_code != 0, result.output
        assert "Traceback" not in result.output
        return result.output

    return run


@pytest.fixture
def render_cli(run_cli, tmp_path):
    """Render messages with `sdk template render --model-type`; asserts success, gives stdout."""
    def render(model_type: str, messages, generation_prompt: bool = False) -> str:
        path = tmp_path / "messages.json"
        path.write_text(json.dumps(messages, ensure_ascii=False), encoding="utf-8")
        args = ["template", "render", "--model-type", model_type, "--messages", path]
        result = run_cli(*args, *(["--add-generation-prompt"] if generation_prompt else []))
        assert result.exit_code == 0, result.output
        return result.stdout

    return render


@pytest.fixture
def identity_data(tmp_path) -> Path:
    """A small messages-format dataset: the same identity answer in several phrasings."""
    path = tmp_path / "identity.jsonl"
    questions = ["Who are you?", "What is your name?", "Introduce yourself.", "Your name?"]
    with path.open("w", encoding="utf-8") as handle:
        for question in questions:
            handle.write(json.dumps({"messages": [
                {"role": "user", "content": question},
                {"role": "assistant", "content": "I am Tiny, made by the tests."},
            ]}) + "\n")
    return path


@pytest.fixture
def hf_hub_server(tmp_path, monkeypatch):
    """A started fake Hugging Face Hub (fake_hubs/huggingface.py). While the test runs,
    huggingface_hub has a fresh HF_HOME under tmp_path, no token and offline mode off; pass
    ``endpoint=server.url`` (or HF_ENDPOINT to a subprocess)."""
    from fake_hubs.huggingface import FakeHuggingFaceHub, isolate_client

    isolate_client(monkeypatch, tmp_path / "hf-home")
    with FakeHuggingFaceHub() as server:
        yield server


def _modelscope_gives_up_quickly() -> None:
    """modelscope reads its timeouts and retry counts once, when first imported: before any test
    imports it, make it give up on a failing or silent hub within seconds."""
    from fake_hubs.modelscope import give_up_quickly

    give_up_quickly()


_modelscope_gives_up_quickly()


@pytest.fixture
def ms_hub_server(tmp_path, monkeypatch):
    """A started fake ModelScope hub (fake_hubs/modelscope.py). While the test runs, modelscope
    has a fresh MODELSCOPE_HOME and MODELSCOPE_CACHE under tmp_path and no token or endpoint
    from the environment; pass ``endpoint=server.url`` (or MODELSCOPE_ENDPOINT to a
    subprocess)."""
    from fake_hubs.modelscope import FakeModelScopeHub, isolate_client

    isolate_client(monkeypatch, tmp_path / "ms-home")
    with FakeModelScopeHub() as server:
        yield server


# The remote-code families converted on load to a native architecture (sdk.models.native):
# the fixtures and the end-to-end flow their plugins' tests share.


@pytest.fixture(scope="module")
def native_cache(tmp_path_factory):
    """SFT_SDK_CACHE set to a folder of the test module's own while its tests run: each
    official checkpoint the module converts is converted once, and not found in another
    module's cache."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SFT_SDK_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


def load_converted(model_type: str, folder: Path, **arguments) -> tuple[Any, Any]:
    """The model (in eval mode) and tokenizer of ``model_type`` on the official checkpoint
    ``folder``, as `sdk sft` and `sdk infer` load them (load_model: a converted family's loader
    converts the folder first); ``arguments``: further InferArguments, e.g. dtype."""
    from sdk.config import InferArguments
    from sdk.models.loader import load_model
    from sdk.plugins import load_plugins

    registry = load_plugins().registry
    model, tokenizer = load_model(registry.get("models", model_type), InferArguments(
        model_type=model_type, model_id_or_path=str(folder), **arguments), registry)
    return model.eval(), tokenizer


@pytest.fixture
def sdk_sft(run_cli, identity_data, tmp_path):
    """``sdk_sft(model_type, folder, sft_type="lora", steps=2, flags=())``: `sdk sft` of
    ``model_type`` on the checkpoint ``folder`` with identity_data (batch 2, saved at the last
    step, ``flags`` added), asserted to succeed; gives the run folder. Each call writes to an
    output folder of its own under tmp_path."""
    outputs: list[Path] = []

    def train(model_type: str, folder: Path, sft_type: str = "lora", steps: int = 2,
              flags: tuple = ()) -> Path:
        output = tmp_path / f"sft-{len(outputs)}"
        outputs.append(output)
        result = run_cli("sft", "--model-type", model_type, "--model-id-or-path", folder,
                         "--sft-type", sft_type, "--dataset", identity_data, "--max-steps",
                         steps, "--batch-size", "2", "--save-steps", steps, "--output-dir",
                         output, *flags)
        assert result.exit_code == 0, result.output
        return only_run(output, model_type)

    return train


class LoraRoundTrip(NamedTuple):
    """What lora_round_trip gives back to a family test's own assertions."""

    run: Path  # the run folder
    adapter: Path  # its checkpoint folder (adapter_config.json and the adapter's weights)
    target_modules: set  # adapter_config.json's target_modules
    merged: Any  # `sdk export --merge-lora`'s folder, loaded by AutoModelForCausalLM
    model: Any  # the run reloaded by load_for_inference: the converted base and the adapter
    inputs: Any  # the probe conversation, encoded as a generation prompt
    reply: str  # `sdk infer --ckpt-dir RUN`'s stdout
    card: str  # the README.md of the run pushed with `sdk push --hub local`
    exported: str  # what `sdk export --merge-lora` wrote to stderr


@pytest.fixture
def lora_round_trip(run_cli, sdk_sft, tmp_path):
    """``lora_round_trip(model_type, folder, conversation="single turn", rtol=1e-5,
    atol=1e-5)``: a converted family's LoRA run as a user makes it, from the official
    checkpoint ``folder``. It asserts what holds for every family: `sdk sft` (2 steps),
    `sdk infer --ckpt-dir` and `sdk export --merge-lora` succeed; the merged folder loads with
    AutoModelForCausalLM without remote code and gives the logits (within rtol/atol) of the
    adapter model that load_for_inference rebuilds, on ``conversation``; `sdk push --hub local`
    succeeds, and `sdk infer` from the pushed copy (on ``folder``: the card names no local
    path) replies as from the run. The test asserts its family's own: the merged architecture,
    the target modules, the card's line, whether the adapter loads onto the official code."""
    import torch
    from transformers import AutoModelForCausalLM

    from sdk.config import InferArguments
    from sdk.infer.load import load_for_inference
    from sdk.plugins import load_plugins

    def trip(model_type: str, folder: Path, conversation: str = "single turn",
             rtol: float = 1e-5, atol: float = 1e-5) -> LoraRoundTrip:
        run = sdk_sft(model_type, folder, "lora", 2, flags=("--learning-rate", "1e-2"))
        adapter = next(run.glob("checkpoint-*"))
        targets = set(json.loads((adapter / "adapter_config.json").read_text())[
            "target_modules"])
        query = ("--query", "Who are you?", "--max-new-tokens", "6", "--stream", "false")
        reply = run_cli("infer", "--ckpt-dir", run, *query)
        assert reply.exit_code == 0, reply.output
        exported = run_cli("export", "--ckpt-dir", run, "--merge-lora", "true", "--output-dir",
                           tmp_path / "merged")
        assert exported.exit_code == 0, exported.output
        merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")  # no remote code
        model, tokenizer, template = load_for_inference(InferArguments(ckpt_dir=str(run)),
                                                        load_plugins().registry)
        inputs = template.tokenize_prompt(tokenizer, CONVERSATIONS[conversation])
        with torch.no_grad():
            # in fp32: a base loaded in half precision (GPTQ) is merged into fp32 weights
            torch.testing.assert_close(merged.float()(**inputs).logits,
                                       model(**inputs).logits.float(), rtol=rtol, atol=atol)
        hub = tmp_path / "hub" / f"{model_type}-lora"
        pushed = run_cli("push", "--hub", "local", "--ckpt-dir", run, "--repo-id", hub)
        assert pushed.exit_code == 0, pushed.output
        there = run_cli("infer", "--ckpt-dir", hub, "--model-id-or-path", folder, *query)
        assert there.exit_code == 0 and there.stdout == reply.stdout, there.output
        return LoraRoundTrip(run, adapter, targets, merged, model, inputs, reply.stdout,
                             (hub / "README.md").read_text(), exported.stderr)

    return trip
