"""Canary for tools/typecheck_trt.py: this file misuses the TensorRT API on purpose and MUST be rejected.

Not a test module (pytest does not collect it: no `test_` prefix) and outside the project's mypy run
(`files = ["sr_deploy"]`). If mypy ever accepts it, the stubs are not in use and `tensorrt` is `Any`.
Every misuse below is one TensorRT 10/11 users really make; keep them in sync with CANARY_EXPECTED.
"""

from __future__ import annotations

import tensorrt as trt


def misuse_the_api(logger: trt.ILogger) -> None:
    builder = trt.Builder(logger)
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.FP16X)  # misspelt member
    config.set_memory_pool_limit(1 << 30, trt.MemoryPoolType.WORKSPACE)  # arguments swapped
    engine = trt.Runtime(logger).deserialize_cuda_engine(b"engine bytes")
    context = engine.create_execution_context()
    context.execute_async_v3("stream")  # a str where the CUDA stream handle (int) is required
