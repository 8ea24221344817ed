#!/usr/bin/env bash
# The rollout engines and the real-run rehearsal under the oldest transformers that
# requirements.txt allows (5.17, also the GPU image's version): transformers 5.17 and the
# huggingface-hub 1.x it needs (with hub 1.x's HTTP client, httpx) go into a folder that is put
# in front of this environment's packages; everything else is this environment's.
set -euo pipefail
cd "$(dirname "$0")/.."
target=${OLDEST_DIR:-/tmp/uniapl-oldest}
python -m pip install --quiet --no-deps --target "$target" transformers==5.17.0 huggingface-hub==1.33.0 \
    httpx==0.28.1 httpcore==1.0.9 h11==0.16.0 anyio==4.16.0 sniffio==1.3.1 certifi idna
export PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1
python -c "import transformers; print('transformers', transformers.__version__)"
python -m pytest -q tests/test_rollouts.py tests/test_static_engine.py tests/test_vllm_engine.py tests/test_real_run.py
