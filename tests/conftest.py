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
