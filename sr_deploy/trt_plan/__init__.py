"""Every TensorRT decision as plain, tested logic: nothing in this package imports `tensorrt`.

The thin layer (`sr_deploy.trt_env`, `sr_deploy.export.tensorrt`, `sr_deploy.runtime.trt_backend`) only carries out
what these modules decide. Each name has one home; import it from there (this package re-exports nothing):

- `profiles`: input shapes and optimization profiles (from typed shapes, or a folder of images), the default profile.
- `versions`: TensorRT versions, the precisions and routes it builds, and the precision plan per version.
- `engine_key`: the engine cache key, why a cached engine is stale, and the engine, sidecar and timing-cache names.
- `inspector`: the engine inspector's JSON (10.x and 11.x) and the precision audit.
- `gate`: the accuracy gate against ONNX Runtime FP32 (through `sr_deploy.compare`) and its inputs.
- `sidecar`: the JSON sidecar beside every engine, and whether a cached engine may be reused.
- `workspace`: the workspace size to suggest after a build ran out of memory.
"""
