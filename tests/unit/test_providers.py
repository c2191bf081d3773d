"""Execution providers: a GPU worker must really run on CUDA, not fall back to the CPU."""

import onnxruntime as ort
import pytest

from workers.runtime.onnx import (CPU_PROVIDER, GPU_PROVIDER, check_cuda_active,
                                  check_provider_runs, choose_providers)


def test_the_probe_session_runs_on_a_provider_that_is_usable():
    check_provider_runs(CPU_PROVIDER)


@pytest.mark.skipif(GPU_PROVIDER in ort.get_available_providers(),
                    reason="this machine has CUDA; the GPU path is measured by bench/variants.py")
def test_without_cuda_a_gpu_worker_is_refused_with_the_reason():
    with pytest.raises(RuntimeError, match=GPU_PROVIDER):
        check_cuda_active()
    with pytest.raises(RuntimeError, match=GPU_PROVIDER):
        choose_providers(require_gpu=True)
    assert choose_providers() == [CPU_PROVIDER]
