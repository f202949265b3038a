"""python -m fastops train: end to end on the built-in data, --impl both, checkpoint and
--resume after a signal, option errors, and data-parallel training over 2 gloo processes."""

import io
import os
import re
import signal
import socket
import sys

import pytest
import torch
import torch.multiprocessing
from helpers import HAS_CUDA

from fastops.__main__ import main
from fastops.models import IMPLS
from fastops.train import INTERRUPTED, Options, Result, _loss_figure, _Run, _StopRequest, train


@pytest.fixture(autouse=True)
def one_thread():
    """The test models are tiny: with several threads their time goes to thread hand-offs,
    which on a busy machine (more runnable threads than cores) take a hundred times longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_cli(capsys, *argv):
    """(exit status, stdout, stderr) of ``python -m fastops train argv``."""
    status = main(["train", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_linear_regression_learns_the_formula(tmp_path, capsys):
    status, out, err = run_cli(capsys, "--model", "linear_regression", "--out", str(tmp_path))
    assert status == 0
    assert err == ""  # a log, not a terminal: no progress bar, only the epoch lines
    assert "data: built-in synthetic linear regression" in out
    assert re.search(r"torch epoch 3/3: train loss \S+, MSE \S+ \| test loss \S+, MSE \S+ \| "
                     r"\S+ s, \S+ samples/s", out)
    mse = float(re.search(r"torch: test MSE (\S+) after epoch 3,", out).group(1))
    assert mse < 1e-3  # the noise alone gives 1e-4
    assert (tmp_path / "linear_regression-torch.pt").exists()


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, keeping what is written to it."""

    def isatty(self):
        return True


def test_the_bar_and_the_epoch_line_give_the_same_time_and_rate(tmp_path, capsys, monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    train(Options(model="mlp", impl="both", epochs=1, limit=256, batch_size=32,
                  out=str(tmp_path)))
    out, bars = capsys.readouterr().out, terminal.getvalue()
    for impl in IMPLS:
        line = re.search(rf"{impl} epoch 1/1: .* \| (\S+ s, \S+ samples/s)\n", out)[1]
        # the bar's last state, before it is cleared: the rate of all the epoch's steps
        last_bar = re.findall(rf"{impl} epoch 1/1: 100%.*?(\S+ s, \S+ samples/s)", bars)[-1]
        assert last_bar == line
    assert "it/s" not in bars and "sample/s" not in bars  # no rate of tqdm's own


@pytest.mark.parametrize("model,options,features", [
    ("softmax_regression", dict(limit=384, batch_size=64), 784),
    ("logistic_regression", dict(epochs=3), 2),
    # breast cancer table, 30 features; three sigmoid layers leave the plateau after ~30 epochs
    ("multi_feature_logistic", dict(epochs=40), 30),
])
def test_classifiers_report_accuracy(tmp_path, model, options, features):
    result = train(Options(model=model, out=str(tmp_path), **options))["torch"]
    first_layer = next(m for m in result.model.modules() if isinstance(m, torch.nn.Linear))
    assert first_layer.in_features == features
    assert result.epochs[-1]["test_metric"] > 0.8  # accuracy: all three sets are easy
    assert all(record["samples"] > 0 for record in result.epochs)


def test_limit_reports_the_samples_really_used(tmp_path, capsys):
    # the built-in digits have 1437 training and 360 test samples: a limit between the two
    status, out, _ = run_cli(capsys, "--model", "softmax_regression", "--limit", "512",
                             "--epochs", "1", "--out", str(tmp_path))
    assert status == 0
    assert "(--limit 512: the first 512 of 1437 train samples, all 360 test samples)" in out


def test_multi_feature_logistic_sized_to_a_csv_table(tmp_path):
    rng = torch.Generator().manual_seed(0)
    features = torch.randint(0, 200, (50, 8), generator=rng)
    rows = [",".join(map(str, row + [i % 2])) for i, row in enumerate(features.tolist())]
    (tmp_path / "diabetes.csv").write_text("\n".join(rows) + "\n")
    result = train(Options(model="multi_feature_logistic", data=str(tmp_path), epochs=1,
                           out=str(tmp_path / "run")))["torch"]
    assert result.model[0].in_features == 8 and result.epochs[0]["samples"] == 40


def test_both_impls_from_the_same_weights_plot_and_summary(tmp_path, capsys):
    results = train(Options(model="linear_regression", impl="both", epochs=1, out=str(tmp_path)))
    out = capsys.readouterr().out
    torch_model, fastops_model = results["torch"].model, results["fastops"].model
    assert type(fastops_model[0]).__module__.startswith("fastops")
    for ours, theirs in zip(fastops_model.parameters(), torch_model.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    assert re.search(r"summary linear_regression: test torch MSE \S+, fastops MSE \S+; loss "
                     r"curves \S+", out)
    plot = tmp_path / "linear_regression-loss.png"
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(results["torch"].step_losses) == len(results["fastops"].step_losses) == 100


def test_both_impls_speed_ratio_after_warm_up_in_alternating_blocks(tmp_path, capsys,
                                                                   monkeypatch):
    ended = []  # the impl of every timed block, in the order they ran
    end_block = _Run._end_block
    monkeypatch.setattr(_Run, "_end_block", lambda run: ended.append(run.impl) or end_block(run))
    # 200 samples in batches of 10: 20 steps an epoch, timed in 10 blocks of 2 steps
    results = train(Options(model="linear_regression", impl="both", epochs=2, limit=200,
                            out=str(tmp_path)))
    for result in results.values():
        assert [(block.epoch, block.first_step, block.steps) for block in result.blocks] == [
            (epoch, step, 2) for epoch in range(2) for step in range(0, 20, 2)]
        assert [block.warm_up for block in result.blocks] == [True] + [False] * 19
        assert all(block.samples == 20 and block.seconds > 0 for block in result.blocks)
        # an epoch's time is its blocks', not the other build's turns in between
        assert result.epochs[0]["seconds"] == pytest.approx(
            sum(block.seconds for block in result.blocks[:10]))
    # the builds take turns block by block, which goes first alternating from pair to pair
    assert ended == [impl for pair in range(20) for impl in (IMPLS if pair % 2 == 0
                                                              else IMPLS[::-1])]
    out = capsys.readouterr().out
    speed = re.search(r"speed fastops/torch: (\S+)x median over 19 block pairs, quartiles "
                      r"(\S+)x-(\S+)x, range (\S+)x-(\S+)x \(torch \S+, fastops \S+ samples/s "
                      r"over those blocks\); timed: training steps \(forward, backward, "
                      r"optimiser step\) in blocks of 2 steps, .* after one untimed warm-up "
                      r"block of each build", out)
    median, low_quartile, high_quartile, low, high = map(float, speed.groups())
    assert low <= low_quartile <= median <= high_quartile <= high


class _SignalAtStep:
    """Wraps torch.optim.SGD.step to send this process a signal during the n-th call (as a
    Ctrl-C arriving mid-step would)."""

    def __init__(self, monkeypatch, at_call, signum=signal.SIGINT):
        self.calls, self.at_call, self.signum = 0, at_call, signum
        original = torch.optim.SGD.step

        def step(optimizer, *args, **kwargs):
            self.calls += 1
            if self.calls == self.at_call:
                signal.raise_signal(self.signum)
            return original(optimizer, *args, **kwargs)

        monkeypatch.setattr(torch.optim.SGD, "step", step)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_saves_a_checkpoint_and_resume_matches_an_uninterrupted_run(
        tmp_path, capsys, monkeypatch, signum):
    # mlp: dropout, so the resumed run must also restore the RNG state to match
    argv = ["--model", "mlp", "--limit", "192", "--batch-size", "32", "--epochs", "3"]
    status, _, _ = run_cli(capsys, *argv, "--out", str(tmp_path / "whole"))
    assert status == 0
    whole = torch.load(tmp_path / "whole" / "mlp-torch.pt", weights_only=True)

    # The handlers the process had (SIG_IGN for SIGINT where a shell started it in the
    # background), to be restored.
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    with monkeypatch.context() as patch:
        _SignalAtStep(patch, at_call=8, signum=signum)  # epoch 2 (6 steps an epoch), step 2
        status, out, err = run_cli(capsys, *argv, "--out", str(tmp_path / "parts"))
    assert status == INTERRUPTED
    assert f"{signal.Signals(signum).name}: stopping after this step" in err
    assert "torch: stopped at epoch 2, step 2; checkpoint" in out
    assert {s: signal.getsignal(s) for s in handlers} == handlers  # handlers restored
    checkpoint_path = tmp_path / "parts" / "mlp-torch.pt"
    checkpoint = torch.load(checkpoint_path, weights_only=True)
    assert (checkpoint["epoch"], checkpoint["step"], len(checkpoint["step_losses"])) == (1, 2, 8)
    assert set(checkpoint) >= {"model", "optimizer", "processes"}

    status, out, _ = run_cli(capsys, *argv, "--out", str(tmp_path / "parts"), "--resume")
    assert status == 0 and "torch: resuming" in out and "at epoch 2, step 2" in out
    resumed = torch.load(checkpoint_path, weights_only=True)
    assert resumed["step_losses"] == whole["step_losses"]
    for key, value in whole["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    for record, resumed_record in zip(whole["epochs"], resumed["epochs"], strict=True):
        assert {**record, "seconds": 0} == {**resumed_record, "seconds": 0}  # all but the time
    assert resumed["epochs"][1]["samples"] == 192  # the resumed epoch counts all its samples


def test_both_impls_interrupted_and_resumed_train_as_uninterrupted_and_alone(tmp_path, capsys,
                                                                            monkeypatch):
    # mlp: dropout, so each build must keep its own RNG state while they take turns; 320
    # samples in batches of 16: 20 steps an epoch, in blocks of 2 steps
    argv = ["--model", "mlp", "--limit", "320", "--batch-size", "16", "--epochs", "2"]
    assert run_cli(capsys, *argv, "--out", str(tmp_path / "alone"))[0] == 0
    assert run_cli(capsys, *argv, "--impl", "both", "--out", str(tmp_path / "whole"))[0] == 0
    with monkeypatch.context() as patch:
        # steps in turn: torch 1-2, fastops 1-2, fastops 3-4, torch 3-4, torch 5: a block's middle
        _SignalAtStep(patch, at_call=9)
        status, out, _ = run_cli(capsys, *argv, "--impl", "both", "--out", str(tmp_path / "parts"))
    assert status == INTERRUPTED
    assert "torch: stopped at epoch 1, step 5" in out
    assert "fastops: stopped at epoch 1, step 4" in out
    status, out, _ = run_cli(capsys, *argv, "--impl", "both", "--out", str(tmp_path / "parts"),
                             "--resume")
    assert status == 0 and out.count(": resuming") == 2
    for impl in IMPLS:
        whole, resumed = (torch.load(tmp_path / run / f"mlp-{impl}.pt", weights_only=True)
                          for run in ("whole", "parts"))
        assert resumed["step_losses"] == whole["step_losses"], impl
        for key, value in whole["model"].items():
            assert torch.equal(resumed["model"][key], value), (impl, key)
    alone, both = (torch.load(tmp_path / run / "mlp-torch.pt", weights_only=True)
                   for run in ("alone", "whole"))
    assert alone["step_losses"] == both["step_losses"]  # taking turns changed nothing


@pytest.mark.parametrize("main_process", [True, False])
def test_only_the_main_process_announces_a_stop(capsys, main_process):
    # under torchrun every process gets the Ctrl-C: one announcement is enough
    with _StopRequest(announce=main_process) as stop:
        signal.raise_signal(signal.SIGINT)
    assert stop.requested
    assert ("SIGINT: stopping after this step" in capsys.readouterr().err) == main_process


def test_resume_with_more_epochs_goes_on(tmp_path):
    first = train(Options(model="logistic_regression", epochs=1, out=str(tmp_path)))["torch"]
    more = train(Options(model="logistic_regression", epochs=2, out=str(tmp_path), resume=True))
    assert len(first.epochs) == 1 and len(more["torch"].epochs) == 2
    assert len(more["torch"].step_losses) == 2 * len(first.step_losses)


def test_option_and_data_errors(tmp_path, capsys, monkeypatch):
    def error(*argv):
        status, _, err = run_cli(capsys, *argv)
        assert status == 2
        return err

    out = ["--out", str(tmp_path)]
    assert re.search(r"--resume: no checkpoint linear_regression-<impl>.pt for --impl both in ",
                     error("--model", "linear_regression", "--impl", "both", "--resume", *out))
    train(Options(model="linear_regression", epochs=1, out=str(tmp_path)))
    assert "written with batch_size=10 (now 20)" in error(
        "--model", "linear_regression", "--batch-size", "20", "--resume", *out)
    assert "--epochs must be at least 1, got 0" in error("--model", "linear_regression",
                                                         "--epochs", "0", *out)
    assert "data folder" in error("--model", "mnist_cnn", "--data", str(tmp_path / "none"), *out)
    assert "--sync-bn: mlp has no BatchNorm layer" in error("--model", "mlp", "--sync-bn", *out)
    monkeypatch.setenv("WORLD_SIZE", "2")  # as under torchrun, checked before joining the group
    assert "--sync-bn needs CUDA" in error("--model", "lenet_bn", "--sync-bn", "--device", "cpu",
                                           *out)
    if not HAS_CUDA:
        assert "--device cuda: no CUDA GPU" in error("--model", "mlp", "--device", "cuda", *out)


# ------------------------------------------------------------------- data-parallel (gloo) --

def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_worker(rank, world_size, port, options, out_dir):
    """One torchrun-like process: the environment torchrun gives, then fastops.train."""
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    # what the process prints (the bar goes to sys.stderr as it is when the bar is made)
    sys.stdout = open(os.path.join(out_dir, f"rank{rank}.out"), "w")
    sys.stderr = open(os.path.join(out_dir, f"rank{rank}.err"), "w")
    result = train(options)["torch"]
    torch.save({"model": result.model.state_dict(), "epochs": result.epochs},
               os.path.join(out_dir, f"rank{rank}.pt"))
    # End without interpreter finalization: in about one run in ten, both ranks aborted there
    # ("terminate called without an active exception", SIGABRT) after training, saving and
    # destroy_process_group had all finished - gloo's threads torn down during finalization
    # (pytorch/pytorch#179291 describes the same crash). The results are on disk already.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def test_two_gloo_processes_match_one_process_on_the_combined_batch(tmp_path):
    common = dict(model="linear_regression", limit=200, epochs=2, seed=3)
    options = Options(batch_size=10, out=str(tmp_path / "ddp"), **common)
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), options, str(tmp_path)),
                                nprocs=2)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for key, value in rank0["model"].items():
        assert torch.equal(rank1["model"][key], value), key  # replicas stay identical
    single = train(Options(batch_size=20, out=str(tmp_path / "single"), **common))["torch"]
    for key, value in single.model.state_dict().items():
        torch.testing.assert_close(rank0["model"][key], value, atol=1e-5, rtol=1e-5)
    for ddp_epoch, single_epoch in zip(rank0["epochs"], single.epochs, strict=True):
        assert ddp_epoch["samples"] == single_epoch["samples"] == 200
        assert ddp_epoch["test_metric"] == pytest.approx(single_epoch["test_metric"], rel=1e-5)
    checkpoint = torch.load(tmp_path / "ddp" / "linear_regression-torch.pt", weights_only=True)
    assert checkpoint["config"]["world_size"] == 2 and len(checkpoint["processes"]) == 2
    # messages once, from rank 0
    assert "torch epoch 2/2" in (tmp_path / "rank0.out").read_text()
    assert (tmp_path / "rank1.out").read_text() == (tmp_path / "rank1.err").read_text() == ""


@pytest.mark.parametrize("model", ["mnist_cnn", "lenet_bn"])
def test_both_impls_of_a_cnn_train_alike(tmp_path, model):
    results = train(Options(model=model, impl="both", epochs=1, limit=256, batch_size=64,
                            out=str(tmp_path)))
    torch_losses = torch.tensor(results["torch"].step_losses)
    fastops_losses = torch.tensor(results["fastops"].step_losses)
    assert len(torch_losses) == 4
    torch.testing.assert_close(fastops_losses, torch_losses, atol=1e-3, rtol=1e-3)


def tick_labels(figure):
    """The y tick labels a reader sees (major and minor), as drawn."""
    figure.canvas.draw()
    axes = figure.axes[0]
    return [label.get_text() for label in axes.get_yticklabels(which="both") if label.get_text()]


@pytest.mark.parametrize("low,high,scale", [(2.2, 2.3, "linear"), (0.3, 2.3, "linear"),
                                            (0.004, 2.3, "log")])
def test_loss_plot_ticks_read_as_plain_numbers(low, high, scale):
    losses = torch.linspace(high, low, 50).tolist()
    results = {impl: Result(impl, None, losses, [], False) for impl in IMPLS}
    figure = _loss_figure("mlp", "cross_entropy", results)
    assert figure.axes[0].get_yscale() == scale  # log only where it spans decades
    labels = tick_labels(figure)
    assert len(labels) >= 3
    for label in labels:  # 2.25 or 0.01, never 2.28x10^0 or 10^-2
        float(label.replace("\N{MINUS SIGN}", "-"))
