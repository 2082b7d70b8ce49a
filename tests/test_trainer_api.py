"""What TRL users pass to and call on the trainer besides evaluation: callbacks (transformers' TrainerCallback with
TrainerState and TrainerControl), optimizers=(optimizer, scheduler), save_strategy, push_to_hub, and training on an
IterableDataset."""

import json
import os
import shutil
import typing

import pytest
import torch
from datasets import Dataset
from test_evaluation import _config as evaluation_config
from test_evaluation import distinct_chars
from transformers import TrainerCallback, TrainerControl, TrainerState

from reasonrl import GRPOConfig, GRPOTrainer
from reasonrl.checkpoint import list_checkpoints
from reasonrl.config import ConfigError
from reasonrl.errors import ExportError
from reasonrl.tiny import build_tiny_model
from reasonrl.tracking import tag


def _config(out, **overrides):
    """test_evaluation's tiny run, 5 steps long."""
    return evaluation_config(out, **{"max_steps": 5, **overrides})


def _trainer(out, tok, train_dataset=None, **kwargs):
    trainer_kwargs = {key: kwargs.pop(key) for key in ("callbacks", "optimizers", "eval_dataset") if key in kwargs}
    dataset = train_dataset if train_dataset is not None else Dataset.from_list([{"prompt": f"p{i}"} for i in range(6)])
    return GRPOTrainer(build_tiny_model(tok, hidden_size=32, intermediate_size=64, seed=0), [distinct_chars],
                       args=_config(out, **kwargs), train_dataset=dataset, processing_class=tok, **trainer_kwargs)


class Recorder(TrainerCallback):
    """Every event with the step it saw; what on_log and on_evaluate were given."""

    def __init__(self):
        self.events, self.logs, self.metrics = [], [], []

    def __getattribute__(self, name):
        if name.startswith("on_") and name not in ("on_log", "on_evaluate"):
            def record(args, state, control, **kwargs):
                assert isinstance(state, TrainerState) and isinstance(control, TrainerControl)
                self.events.append((name, state.global_step))
            return record
        return super().__getattribute__(name)

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.events.append(("on_log", state.global_step))
        self.logs.append(dict(logs))

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.events.append(("on_evaluate", state.global_step))
        self.metrics.append(dict(metrics))


def test_callbacks_see_transformers_events_in_order_with_the_state_they_read(tmp_path, char_tokenizer):
    recorder = Recorder()
    trainer = _trainer(tmp_path / "run", char_tokenizer, callbacks=[recorder], max_steps=4, logging_steps=2,
                       save_steps=3, eval_strategy="steps", eval_steps=2, num_generations_eval=2,
                       eval_dataset=[{"prompt": "q"}])
    assert recorder.events == [("on_init_end", 0)]
    trainer.train()
    expected = [("on_init_end", 0), ("on_train_begin", 0), ("on_epoch_begin", 0)]
    for s in range(1, 5):  # logging_steps 2, eval_steps 2 (and the last step), save_steps 3 (and the last step)
        # global_step counts the step once its optimizer step is taken, as in transformers
        expected += [("on_step_begin", s - 1), ("on_pre_optimizer_step", s - 1), ("on_optimizer_step", s - 1),
                     ("on_step_end", s)]
        if s in (2, 4):
            # the step's row; the evaluation's one batch, its row and on_evaluate
            expected += [("on_log", s), ("on_prediction_step", s), ("on_log", s), ("on_evaluate", s)]
        if s in (3, 4):
            expected.append(("on_save", s))
        if s == 3:  # 6 prompts, 2 per one-step round: a pass ends every 3 steps
            expected += [("on_epoch_end", 3), ("on_epoch_begin", 3)]
    expected += [("on_log", 4), ("on_train_end", 4)]  # transformers' closing row (train_loss, train_runtime, ...)
    assert recorder.events == expected
    assert [log.get("loss") is not None for log in recorder.logs] == [True, False, True, False, False]
    assert [log["step"] for log in recorder.logs] == [2, 2, 4, 4, 4]
    assert recorder.logs[-1]["train_loss"] == pytest.approx(
        sum(row["loss"] for row in trainer.log_history if "loss" in row) / 4)
    assert [m["eval_reward"] for m in recorder.metrics] == [row["eval_reward"] for row in trainer.log_history
                                                            if "eval_reward" in row]
    state = trainer.state
    assert (state.global_step, state.max_steps, state.logging_steps, state.eval_steps, state.save_steps) == (
        4, 4, 2, 2, 3)
    assert state.is_world_process_zero and state.is_local_process_zero and state.epoch == pytest.approx(4 / 3)
    assert state.log_history is trainer.log_history and len(state.log_history) == 4 + 2 + 1
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "run"))] == ["checkpoint-3", "checkpoint-4"]


class KindRecorder(TrainerCallback):
    """Every event with its step, and for on_log which kind of row (a step's or an evaluation's)."""

    def __init__(self):
        self.events = []

    def __getattribute__(self, name):
        if name.startswith("on_"):
            def record(args, state, control, **kwargs):
                kind = ""
                if name == "on_log":
                    kind = "eval" if any(key.startswith("eval_") for key in kwargs["logs"]) else "train"
                self.events.append((name, state.global_step, kind))
            return record
        return super().__getattribute__(name)


def test_the_events_come_in_the_order_trls_own_trainer_fires_them(tmp_path, char_tokenizer):
    """The same run (8 prompts, 2 per step in 2 micro-batches, eval and save schedules) under TRL 1.16's
    GRPOTrainer and reasonrl's: the same events at the same steps, ending with the train-summary log."""
    trl = pytest.importorskip("trl")
    rows = [{"prompt": f"p{i}"} for i in range(8)]
    options = dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, num_generations=2,
                   max_completion_length=5, max_steps=4, logging_steps=2, save_steps=3, eval_strategy="steps",
                   eval_steps=2, per_device_eval_batch_size=2, num_generations_eval=2, learning_rate=1e-2,
                   report_to="none")
    events = {}
    for name, config, trainer_class in (
            ("trl", trl.GRPOConfig(output_dir=str(tmp_path / "trl"), bf16=False, use_cpu=True, **options),
             trl.GRPOTrainer),
            ("reasonrl", GRPOConfig(output_dir=str(tmp_path / "ours"), **options), GRPOTrainer)):
        recorder = KindRecorder()
        trainer_class(model=build_tiny_model(char_tokenizer, hidden_size=32, intermediate_size=64, seed=0),
                      reward_funcs=[distinct_chars], args=config, train_dataset=Dataset.from_list(rows),
                      eval_dataset=Dataset.from_list([{"prompt": "q"}]), processing_class=char_tokenizer,
                      callbacks=[recorder]).train()
        events[name] = recorder.events
    assert events["trl"][-2:] == [("on_log", 4, "train"), ("on_train_end", 4, "")]  # its train_runtime/... row
    assert events["reasonrl"] == events["trl"]
    assert ("on_substep_end", 0, "") in events["reasonrl"] and ("on_prediction_step", 2, "") in events["reasonrl"]


class ForceAt(TrainerCallback):
    """Asks for a log and an evaluation at step 1, which logging_steps and eval_strategy=no would not give."""

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == 1:
            control.should_log = control.should_evaluate = True


def test_a_callback_asks_for_a_log_and_an_evaluation(tmp_path, char_tokenizer):
    recorder = Recorder()
    trainer = _trainer(tmp_path / "run", char_tokenizer, callbacks=[ForceAt(), recorder], max_steps=2,
                       num_generations_eval=2, eval_dataset=[{"prompt": "q"}])
    trainer.train()
    assert [e for e in recorder.events if e[0] in ("on_log", "on_evaluate")] == [
        ("on_log", 1), ("on_log", 1), ("on_evaluate", 1), ("on_log", 2)]  # the last: the train summary
    assert [row["step"] for row in trainer.log_history if "eval_reward" in row] == [1]


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True
            control.should_save = True  # and save there, though save_steps says otherwise


def test_a_callback_stops_training_and_forces_a_save_at_its_step(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path / "run", char_tokenizer, callbacks=[StopAt(2)], max_steps=5, save_steps=100)
    rows = trainer.train()
    assert trainer.state.global_step == 2 and [row["step"] for row in rows] == [1, 2]
    assert trainer.log_history[-1]["step"] == 2 and "train_runtime" in trainer.log_history[-1]
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "run"))] == ["checkpoint-2"]


def test_callback_classes_and_add_pop_remove_callback(tmp_path, char_tokenizer):
    trainer = _trainer(tmp_path / "run", char_tokenizer, callbacks=[Recorder], max_steps=2)
    recorder = trainer.pop_callback(Recorder)
    assert isinstance(recorder, Recorder) and recorder.events == [("on_init_end", 0)]
    stopper = StopAt(1)
    trainer.add_callback(stopper)
    trainer.add_callback(recorder)
    trainer.remove_callback(stopper)
    trainer.train()
    assert [e for e in recorder.events if e[0] == "on_step_end"] == [("on_step_end", 1), ("on_step_end", 2)]


@pytest.mark.parametrize("callback, phrase", [
    (lambda trainer, row: None, ("callbacks must be transformers.TrainerCallback objects or classes (got function "
                                 "'<lambda>'); subclass TrainerCallback")),
    ("printer", "(got a str)"),
])
def test_a_callback_that_is_not_a_trainer_callback_is_a_one_line_error(tmp_path, char_tokenizer, callback, phrase):
    with pytest.raises(ConfigError) as error:
        _trainer(tmp_path / "run", char_tokenizer, callbacks=[callback])
    assert phrase in str(error.value) and "\n" not in str(error.value)
    trainer = _trainer(tmp_path / "run", char_tokenizer)
    with pytest.raises(ConfigError, match="callbacks must be transformers.TrainerCallback"):
        trainer.add_callback(callback)


# ------------------------------------------------------------------------------------------ optimizers


def test_optimizers_are_used_as_given(tmp_path, char_tokenizer):
    model = build_tiny_model(char_tokenizer, hidden_size=32, intermediate_size=64, seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # a step that moves nothing
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    trainer = GRPOTrainer(model, [distinct_chars], args=_config(tmp_path / "run", max_steps=3, learning_rate=0.5),
                          train_dataset=[{"prompt": f"p{i}"} for i in range(6)], processing_class=char_tokenizer,
                          optimizers=(optimizer, schedule))
    rows = trainer.train()
    assert trainer.optimizer is optimizer and trainer.lr_scheduler is schedule and schedule.last_epoch == 3
    assert all(torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    assert [row["learning_rate"] for row in rows] == [0.0] * 3
    # only an optimizer: the config's schedule (linear decay from learning_rate) is built for it
    adam = torch.optim.Adam(model.parameters(), lr=0.3)
    trainer = GRPOTrainer(model, [distinct_chars], args=_config(tmp_path / "run2", max_steps=3, learning_rate=0.3),
                          train_dataset=[{"prompt": f"p{i}"} for i in range(6)], processing_class=char_tokenizer,
                          optimizers=(adam, None))
    rows = trainer.train()
    assert trainer.optimizer is adam
    assert [row["learning_rate"] for row in rows] == pytest.approx([0.2, 0.1, 0.0])


@pytest.mark.parametrize("optimizers, phrase", [
    ("adam", "optimizers must be a pair (optimizer, scheduler), either of them None (got str)"),
    ((None, "schedule"), "optimizers[1] must be a learning-rate scheduler (with step()) or None (got str)"),
    ((None, torch.optim.lr_scheduler.ConstantLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1))),
     "optimizers=(None, scheduler): a scheduler steps its own optimizer"),
    ((torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1), None),
     "the optimizer given in optimizers= holds none of the model's trainable parameters"),
])
def test_wrong_optimizers_are_one_line_errors(tmp_path, char_tokenizer, optimizers, phrase):
    with pytest.raises(ConfigError) as error:
        _trainer(tmp_path / "run", char_tokenizer, optimizers=optimizers).train()
    assert phrase in str(error.value) and "\n" not in str(error.value)


# ------------------------------------------------------------------------------------------ save_strategy


@pytest.mark.parametrize("strategy, saved", [("steps", [3, 6, 7]), ("epoch", [3, 6]), ("no", [])])
def test_save_strategy(tmp_path, char_tokenizer, strategy, saved):
    trainer = _trainer(tmp_path / "run", char_tokenizer, max_steps=7, save_steps=3, save_strategy=strategy)
    trainer.train()
    assert [int(p.rsplit("-", 1)[1]) for p in list_checkpoints(str(tmp_path / "run"))] == saved


def test_save_strategy_no_still_saves_when_interrupted(tmp_path, char_tokenizer):
    import signal

    from reasonrl.guards import TrainingInterrupted

    class Interrupt(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == 2:
                os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the run stops after this step with a checkpoint

    trainer = _trainer(tmp_path / "run", char_tokenizer, save_strategy="no", callbacks=[Interrupt()])
    with pytest.raises(TrainingInterrupted, match="interrupted after step 2; saved"):
        trainer.train()
    assert [os.path.basename(p) for p in list_checkpoints(str(tmp_path / "run"))] == ["checkpoint-2"]


# ------------------------------------------------------------------------------------------ the Hub


class FakeHub:
    """Stands in for huggingface_hub.HfApi's create_repo and upload_folder (no network here)."""

    calls: typing.ClassVar[list] = []

    def __init__(self, token=None, **kwargs):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False, **kwargs):
        FakeHub.calls.append(("create_repo", repo_id, private, exist_ok, self.token))
        return type("RepoUrl", (), {"repo_id": f"someone/{repo_id}" if "/" not in repo_id else repo_id})()

    def upload_folder(self, folder_path, repo_id, commit_message=None, revision=None, run_as_future=False,
                      ignore_patterns=None, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        files = sorted(os.path.relpath(os.path.join(root, name), folder_path)
                       for root, _, names in os.walk(folder_path) for name in names)
        uploaded = list(filter_repo_objects(files, ignore_patterns=ignore_patterns))
        FakeHub.calls.append(("upload_folder", repo_id, commit_message, run_as_future, uploaded))
        return "commit-info"


def test_push_to_hub_saves_the_model_and_a_card_and_uploads_the_run_without_checkpoints(tmp_path, char_tokenizer,
                                                                                        monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHub)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    FakeHub.calls = []
    trainer = _trainer(tmp_path / "run", char_tokenizer, max_steps=2, save_steps=1, hub_model_id="me/grpo-tiny",
                       hub_private_repo=True)
    trainer.train()
    assert trainer.push_to_hub(commit_message="first", token="hf_test") == "commit-info"
    (create, repo, private, exist_ok, token), upload = FakeHub.calls
    assert (create, repo, private, exist_ok, token) == ("create_repo", "me/grpo-tiny", True, True, "hf_test")
    assert upload[:4] == ("upload_folder", "me/grpo-tiny", "first", False)
    files = upload[4]
    assert "model.safetensors" in files and "config.json" in files and "README.md" in files
    assert "metrics.jsonl" in files and "tokenizer_config.json" in files
    assert not [f for f in files if f.startswith("checkpoint-") or f == "reasonrl-run.json"]
    card = (tmp_path / "run" / "README.md").read_text()
    assert "# grpo-tiny" in card and "Trained for 2 optimizer steps" in card and "hub_model_id: me/grpo-tiny" in card
    # a second push replaces what the first one saved (the card is the run's too)
    FakeHub.calls = []
    trainer.push_to_hub(blocking=False, token="hf_test")
    assert FakeHub.calls[1][3] is True  # run_as_future
    # without hub_model_id the repository is the output folder's name; offline is a one-line error
    trainer.args.hub_model_id = None
    FakeHub.calls = []
    trainer.push_to_hub(token="hf_test")
    assert FakeHub.calls[0][1] == "run"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ExportError, match="^cannot push to the Hub: HF_HUB_OFFLINE=1 is set; unset it when online$"):
        trainer.push_to_hub(token="hf_test")


# ------------------------------------------------------------------------------------------ IterableDataset


def _weights(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_a_stream_trains_as_the_same_rows_in_order_and_resumes_exactly(tmp_path, char_tokenizer):
    rows = [{"prompt": f"p{i}"} for i in range(6)]
    in_order = _trainer(tmp_path / "dataset", char_tokenizer, Dataset.from_list(rows), shuffle_dataset=False,
                        max_steps=5, save_steps=1)
    in_order.train()
    stream = Dataset.from_list(rows).to_iterable_dataset()
    streamed = _trainer(tmp_path / "stream", char_tokenizer, stream, shuffle_dataset=False, max_steps=5, save_steps=1)
    streamed.train()
    final = _weights(streamed)
    assert all(torch.equal(v, final[k]) for k, v in _weights(in_order).items())  # the same prompts, same draws
    assert streamed.sampler.state_dict() == {"epoch": 1, "position": 4, "drawn": 10, "size": 6}
    assert streamed.state.epoch == pytest.approx(1 + 4 / 6)

    # resumed from checkpoint-2 (the stream is read again up to its position): the same weights
    shutil.copytree(tmp_path / "stream", tmp_path / "resumed")
    for path in list_checkpoints(str(tmp_path / "resumed")):
        if int(path.rsplit("-", 1)[1]) > 2:
            shutil.rmtree(path)
    resumed = _trainer(tmp_path / "resumed", char_tokenizer, Dataset.from_list(rows).to_iterable_dataset(),
                       shuffle_dataset=False, max_steps=5, save_steps=1)
    resumed.train(resume_from_checkpoint=True)
    assert all(torch.equal(v, final[k]) for k, v in _weights(resumed).items())


def test_a_shuffled_stream_reads_each_pass_whole_in_a_new_order(tmp_path, char_tokenizer):
    rows = [{"prompt": f"p{i}", "index": i} for i in range(6)]
    trainer = _trainer(tmp_path / "run", char_tokenizer, Dataset.from_list(rows).to_iterable_dataset(), max_steps=1)
    first, second = trainer.sampler.take_rows(6), trainer.sampler.take_rows(6)
    assert sorted(r["index"] for r in first) == sorted(r["index"] for r in second) == list(range(6))
    assert [r["index"] for r in first] != [r["index"] for r in second]


def test_a_stream_needs_max_steps_and_checks_its_rows(tmp_path, char_tokenizer):
    stream = Dataset.from_list([{"prompt": f"p{i}"} for i in range(6)]).to_iterable_dataset()
    with pytest.raises(ConfigError, match="^train_dataset is an IterableDataset, a stream of unknown length, so "
                                          "num_train_epochs cannot say when to stop; set max_steps"):
        _trainer(tmp_path / "run", char_tokenizer, stream, max_steps=-1)
    with pytest.raises(ConfigError, match="^dataset_streaming=true reads a stream of unknown length"):
        GRPOConfig(dataset_streaming=True)
    from reasonrl.errors import DataError

    # the first 64 rows are checked at start-up, the rest as they are drawn (8 prompts a round here)
    bad = Dataset.from_list([{"prompt": f"p{i}"} for i in range(70)] + [{"prompt": ""}]).to_iterable_dataset()
    trainer = _trainer(tmp_path / "run", char_tokenizer, bad, shuffle_dataset=False, max_steps=10,
                       per_device_train_batch_size=16)
    with pytest.raises(DataError, match=r"^row 70 of the training stream \(pass 0\): the prompt is empty; fix "
                                        r"that row"):
        trainer.train()


def test_dataset_streaming_from_the_cli(tmp_path, tiny_model_dir):
    from cli_helpers import run_cli

    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"p{i}"}) + "\n" for i in range(5)))
    done = run_cli("train", f"model_name_or_path={tiny_model_dir}", f"dataset_name={data}", "reward_funcs=[length]",
                   "dataset_streaming=true", "max_steps=3", "per_device_train_batch_size=4", "num_generations=2",
                   "max_completion_length=4", "gradient_checkpointing=false", f"output_dir={tmp_path / 'run'}")
    assert done.returncode == 0, done.stderr[-3000:]
    with open(tmp_path / "run" / "checkpoint-3" / "trainer_state.json") as handle:
        sampler = json.load(handle)["sampler"]
    assert sampler == {"epoch": 1, "position": 1, "drawn": 6, "size": 5}  # 3 rounds of 2 prompts from 5 rows


def test_tracker_names_follow_transformers():
    assert [tag(key) for key in ("reward", "eval_reward", "eval_rewards/len/mean", "rewards/len/mean")] == [
        "train/reward", "eval/reward", "eval/rewards/len/mean", "train/rewards/len/mean"]
