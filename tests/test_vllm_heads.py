"""The padded head size asked of vLLM's real attention backend classes, and the price it logs (issue 29).

Runs where vLLM is importable (``scripts/setup-vllm.sh``'s venv), on a CPU. Two of the classes need
a GPU build to import: FlashInfer's module imports the ``flashinfer`` kernels package, and vLLM's
CUDA platform its compiled ``vllm._C_stable_libtorch``. The module-scoped fixture puts empty
stand-ins for those two compiled packages in ``sys.modules`` (and takes them out after), so what
runs is vLLM's own Python: the backends' ``supports_head_size`` and the CUDA platform's selector.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types
from unittest import mock

import pytest

from guide_integrations.vllm.heads import (
    HeadPadding,
    HeadSizeNotSupportedError,
    choose_padding,
    padded_head_size,
    padding_summary,
)

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("vllm") is None,
    reason="vLLM is not installed in this environment; run these tests with scripts/setup-vllm.sh's venv",
)

COMPILED = ("flashinfer", "vllm._C_stable_libtorch")
"""Compiled packages of vLLM's GPU build that its backend and platform modules import at the top."""


class _Compiled(types.ModuleType):
    """An empty stand-in for a compiled package: any name is a mock (never called by these tests)."""

    def __getattr__(self, name: str) -> object:
        if name.startswith("__"):
            raise AttributeError(name)
        return mock.MagicMock(name=f"{self.__name__}.{name}")


class _StandIns(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if any(name == root or name.startswith(root + ".") for root in COMPILED):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Compiled(spec.name)

    def exec_module(self, module):
        module.__path__ = []


@pytest.fixture(scope="module")
def vllm_gpu_modules():
    """vLLM's backend classes and CUDA platform importable on a CPU; sys.modules restored after."""
    before = set(sys.modules)
    finder = _StandIns()
    sys.meta_path.insert(0, finder)
    try:
        from vllm.v1.attention.backends.registry import AttentionBackendEnum

        yield AttentionBackendEnum
    finally:
        sys.meta_path.remove(finder)
        for name in set(sys.modules) - before:
            if name.startswith(("vllm.platforms.cuda", "vllm.v1.attention.backends", *COMPILED)):
                del sys.modules[name]


def _fa4() -> bool:
    from vllm.v1.attention.backends.fa_utils import is_fa_version_supported

    return is_fa_version_supported(4)


# The issue's table, as vLLM 0.32's classes answer it. FlashAttention accepts up to 512 only with FA4,
# which needs a GPU build; on this CPU it is FA2/3's answer: nothing above 256.
ANSWERS = {
    "CPU_ATTN": {64: 80, 128: 160, 256: 512},
    "FLASH_ATTN": {64: 72, 128: 136, 256: None},
    "FLASHINFER": {64: 128, 128: 256, 256: 512},
    "TRITON_ATTN": {64: 65, 128: 129, 256: 257},
}


@pytest.mark.parametrize("head_size", [64, 128, 256])
@pytest.mark.parametrize("name", sorted(ANSWERS))
def test_the_padded_size_is_the_smallest_larger_size_the_backend_class_accepts(vllm_gpu_modules, name, head_size):
    backend = vllm_gpu_modules[name].get_class()
    expected = ANSWERS[name][head_size]
    if name == "FLASH_ATTN" and head_size == 256 and _fa4():
        expected = 264
    assert padded_head_size(head_size, backend) == expected
    if expected is not None:
        assert backend.supports_head_size(expected)
        assert not any(backend.supports_head_size(size) for size in range(head_size + 1, expected))


def _cuda_selector(vllm_gpu_modules, forced=None):
    """vLLM's CUDA selector on an H100 (compute capability 9.0), bf16, for a sliding-window layer like Gemma 3's."""
    import torch
    from vllm.platforms.cuda import CudaPlatform
    from vllm.platforms.interface import DeviceCapability
    from vllm.utils.import_utils import resolve_obj_by_qualname
    from vllm.v1.attention.selector import AttentionSelectorConfig

    def select(size: int):
        config = AttentionSelectorConfig(size, torch.bfloat16, "auto", None, has_sliding_window=True)
        with mock.patch.object(CudaPlatform, "get_device_capability", return_value=DeviceCapability(9, 0)):
            return resolve_obj_by_qualname(CudaPlatform.get_attn_backend_cls(forced, config))

    return select


def test_the_cuda_selector_runs_the_stock_heads_on_flash_attention(vllm_gpu_modules):
    select = _cuda_selector(vllm_gpu_modules)
    for head_size in (64, 128, 256):
        assert select(head_size).get_name() == "FLASH_ATTN"


def test_a_backend_that_accepts_the_padded_size_keeps_running_the_layer(vllm_gpu_modules):
    flash = vllm_gpu_modules["FLASH_ATTN"].get_class()
    select = _cuda_selector(vllm_gpu_modules)
    assert choose_padding(128, flash, select) == HeadPadding(128, 136, flash)


def test_gemma3_on_flash_attention_2_or_3_moves_to_the_backend_vllm_selects_for_a_larger_head(vllm_gpu_modules):
    if _fa4():
        pytest.skip("this vLLM build has FlashAttention 4, which accepts 264")
    flash = vllm_gpu_modules["FLASH_ATTN"].get_class()
    padding = choose_padding(256, flash, _cuda_selector(vllm_gpu_modules))
    assert (padding.padded, padding.name, padding.replaced) == (257, "TRITON_ATTN", flash)
    line = padding_summary([(padding, 1, 2)] * 26)
    assert "256 → 257 on TRITON_ATTN (chosen by GUIDE: FLASH_ATTN accepts no larger head)" in line


def test_a_backend_the_user_fixed_that_accepts_no_larger_head_is_refused_naming_the_flag(vllm_gpu_modules):
    if _fa4():
        pytest.skip("this vLLM build has FlashAttention 4, which accepts 264")
    enum = vllm_gpu_modules
    flash = enum["FLASH_ATTN"].get_class()
    select = _cuda_selector(enum, forced=enum["FLASH_ATTN"])
    refused = r"FLASH_ATTN attention backend accepts no head size from 257 to 512;"
    with pytest.raises(HeadSizeNotSupportedError, match=refused) as error:
        choose_padding(256, flash, select, user_chose=True)
    assert "unset that flag" in str(error.value)
    assert "--attention-backend" in str(error.value)


def test_on_the_cpu_platform_a_head_with_no_larger_cpu_size_is_refused(vllm_gpu_modules):
    """vLLM's CPU selector returns its one backend for every size: GUIDE checks the size, it does not trust it."""
    import torch
    from vllm.config import VllmConfig, set_current_vllm_config
    from vllm.platforms import current_platform
    from vllm.v1.attention.selector import get_attn_backend

    if not current_platform.is_cpu():
        pytest.skip("vLLM's CPU platform is not the current one")

    def select(size: int):  # what GuideAttention passes, for an fp32 sliding-window layer
        return get_attn_backend(size, torch.float32, "auto", attn_type="decoder", has_sliding_window=True)

    with set_current_vllm_config(VllmConfig()):
        cpu = select(512)
        assert cpu.get_name() == "CPU_ATTN"
        assert choose_padding(256, cpu, select) == HeadPadding(256, 512, cpu)
        refused = "CPU_ATTN attention backend accepts no head size from 513 to 1024; vLLM selects no other backend"
        with pytest.raises(HeadSizeNotSupportedError, match=refused):
            choose_padding(512, cpu, select)


def test_the_log_line_prices_the_embedded_model_in_fp32(vllm_gpu_modules):
    """SmolLM2-135M: 30 layers, 3 key/value heads of 64, fp32 (the numbers of docs/vllm.md)."""
    cpu = vllm_gpu_modules["CPU_ATTN"].get_class()
    padding = choose_padding(64, cpu, lambda size: cpu)
    assert padding_summary([(padding, 3, 4)] * 30) == (
        "GUIDE attention heads: head size 64 → 80 on CPU_ATTN; "
        "KV cache 57600 bytes per token against 46080 stock (+25.0 %)"
    )
