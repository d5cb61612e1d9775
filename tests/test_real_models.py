"""Real models of published libraries: swap their LSTMs, compare, train.

Each test builds a library's own LSTM-bearing model, deep-copies it as the oracle, swaps the copy
under test with :func:`handlstm.swap_lstms`, and checks that outputs and every parameter's
gradient agree (float64 where the library runs in float64, to rounding), that the state dict is
unchanged, and that a few optimizer steps give the same losses and weights.

The libraries are not dependencies of handlstm: each test skips, with the reason, where its
library is not installed. They install beside torch 2.13.0 without replacing it::

    pip install -c constraints.txt pytorch-forecasting "gluonts[torch]" flair
    # constraints.txt: torch==2.13.0
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from handlstm import HandLSTM, swap_lstms

F64 = torch.float64


def _named_grads(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_swapped_model_is_the_same_function(model, loss_of, tol, steps=3, lr=0.05):
    """Swap ``model``'s LSTMs; compare losses, gradients and ``steps`` SGD steps with a copy."""
    reference = copy.deepcopy(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    report = swap_lstms(model)
    assert report.swapped and not report.skipped, str(report)
    assert list(model.state_dict()) == list(state)
    lstms = [m for m in model.modules() if isinstance(m, HandLSTM)]
    assert lstms, "no LSTM of this model runs handlstm's forward"
    optimizers = [torch.optim.SGD(m.parameters(), lr=lr) for m in (model, reference)]
    for step in range(steps):
        losses = []
        for module, optimizer in zip((model, reference), optimizers, strict=True):
            optimizer.zero_grad()
            loss = loss_of(module)
            loss.backward()
            losses.append(loss.detach())
        torch.testing.assert_close(losses[0], losses[1], **tol, msg=f"loss at step {step}")
        grads, want = _named_grads(model), _named_grads(reference)
        assert grads.keys() == want.keys() and grads
        torch.testing.assert_close(grads, want, **tol, msg=f"gradients at step {step}")
        for optimizer in optimizers:
            optimizer.step()
    torch.testing.assert_close(model.state_dict(), reference.state_dict(), **tol)
    return report


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the libraries' deprecation notices
        yield


# -- pytorch-forecasting: DeepAR, whose rnn is pytorch_forecasting's LSTM(RNN, nn.LSTM) ----------


def test_pytorch_forecasting_deepar():
    pf = pytest.importorskip("pytorch_forecasting", reason="pytorch-forecasting not installed")
    pd = pytest.importorskip("pandas", reason="pandas not installed")
    np = pytest.importorskip("numpy", reason="numpy not installed")
    torch.manual_seed(0)
    frame = pd.DataFrame(
        {
            "time_idx": np.tile(np.arange(30), 3),
            "series": np.repeat(["a", "b", "c"], 30),
            "value": np.random.RandomState(0).randn(90).cumsum(),
        }
    )
    dataset = pf.TimeSeriesDataSet(
        frame,
        time_idx="time_idx",
        target="value",
        group_ids=["series"],
        min_encoder_length=2,
        max_encoder_length=8,
        max_prediction_length=3,
        time_varying_unknown_reals=["value"],
    )
    model = pf.DeepAR.from_dataset(dataset, hidden_size=6, rnn_layers=2, dropout=0.0).double()
    lstm_class = type(model.rnn)
    assert issubclass(lstm_class, nn.LSTM) and lstm_class is not nn.LSTM  # the subclass case
    x, _ = next(iter(dataset.to_dataloader(train=True, batch_size=6, num_workers=0)))
    x = {k: v.to(F64) if torch.is_floating_point(v) else v for k, v in x.items()}
    x["encoder_lengths"][0] = 2  # uneven lengths: pytorch-forecasting packs them

    def loss_of(module):
        return module(x)["prediction"].pow(2).sum()

    report = assert_swapped_model_is_the_same_function(model, loss_of, dict(rtol=1e-10, atol=1e-12))
    assert isinstance(model.rnn, lstm_class) and isinstance(model.rnn, HandLSTM)
    assert "own code kept" in report.swapped[0].note
    swap_lstms(model, to="torch")
    assert type(model.rnn) is lstm_class


# -- gluonts: the torch DeepAR module (an nn.LSTM inside) ---------------------------------------


def test_gluonts_deepar():
    deepar = pytest.importorskip(
        "gluonts.torch.model.deepar.module", reason="gluonts not installed"
    )
    torch.manual_seed(1)
    model = deepar.DeepARModel(
        freq="D",
        context_length=8,
        prediction_length=4,
        cardinality=[3],
        num_layers=2,
        hidden_size=6,
        dropout_rate=0.0,
        lags_seq=[1, 2, 3],
    ).to(F64)
    shapes = model.describe_inputs(batch_size=3)
    generator = torch.Generator().manual_seed(2)
    inputs = {}
    for name, spec in shapes.items():
        if spec.dtype == torch.int64:
            inputs[name] = torch.zeros(spec.shape, dtype=torch.int64)
        elif "observed" in name:
            inputs[name] = torch.ones(spec.shape, dtype=F64)
        else:
            inputs[name] = torch.randn(spec.shape, generator=generator, dtype=F64)
    future = (3, model.prediction_length)
    inputs["future_target"] = torch.randn(future, generator=generator, dtype=F64)
    inputs["future_observed_values"] = torch.ones(future, dtype=F64)

    def loss_of(module):
        return module.loss(**inputs).mean()

    assert_swapped_model_is_the_same_function(model, loss_of, dict(rtol=1e-10, atol=1e-12))
    assert type(model.rnn) is HandLSTM


# -- flair: a SequenceTagger (embeddings -> bidirectional nn.LSTM -> linear) ---------------------


def test_flair_sequence_tagger():
    pytest.importorskip("flair", reason="flair not installed")
    from flair.data import Corpus, Sentence
    from flair.embeddings import OneHotEmbeddings
    from flair.models import SequenceTagger

    torch.manual_seed(3)
    sentences = [
        Sentence("I love Berlin ."),
        Sentence("you like Paris and Rome ."),
        Sentence("we go home ."),
    ]
    for sentence in sentences:
        for index, token in enumerate(sentence):
            token.add_label("pos", "NVX"[index % 3])
    corpus = Corpus(train=sentences, dev=sentences[:1], test=sentences[:1])
    embeddings = OneHotEmbeddings.from_corpus(corpus, embedding_length=5, min_freq=1)
    tagger = SequenceTagger(
        embeddings,
        corpus.make_label_dictionary("pos"),
        "pos",
        use_crf=False,
        hidden_size=6,
        word_dropout=0.0,
        locked_dropout=0.0,
    )
    assert type(tagger.rnn) is nn.LSTM and tagger.rnn.bidirectional

    def loss_of(module):
        for sentence in sentences:  # flair caches embeddings on the tokens: recompute them
            sentence.clear_embeddings()
        loss, count = module.forward_loss(sentences)
        return loss / count

    # flair runs in float32: HandLSTM and nn.LSTM agree to float32 rounding there
    assert_swapped_model_is_the_same_function(tagger, loss_of, dict(rtol=1e-5, atol=1e-6))
    assert type(tagger.rnn) is HandLSTM


def test_flair_model_file_is_named_and_its_resaved_weights_check(tmp_path, capsys):
    """flair's Model.save writes pickle protocol 4 with flair objects inside: check says what
    it holds (without unpickling it) and the re-save it advises is then checked."""
    pytest.importorskip("flair", reason="flair not installed")
    from flair.data import Corpus, Sentence
    from flair.embeddings import OneHotEmbeddings
    from flair.models import SequenceTagger

    from handlstm.tools import cli

    sentences = [Sentence("I love Berlin ."), Sentence("we go home .")]
    for sentence in sentences:
        for index, token in enumerate(sentence):
            token.add_label("pos", "NVX"[index % 3])
    corpus = Corpus(train=sentences, dev=sentences[:1], test=sentences[:1])
    embeddings = OneHotEmbeddings.from_corpus(corpus, embedding_length=5, min_freq=1)
    tagger = SequenceTagger(embeddings, corpus.make_label_dictionary("pos"), "pos", hidden_size=6)
    path = tmp_path / "tagger.pt"
    tagger.save(path)
    capsys.readouterr()
    assert cli.main(["check", str(path)]) == 2
    err = capsys.readouterr().err
    assert "flair.data.Dictionary" in err and "re-save only its weights" in err
    weights = tmp_path / "weights.pt"
    torch.save(torch.load(path, weights_only=False)["state_dict"], weights)  # our own file
    assert cli.main(["check", str(weights)]) == 0
    assert "rnn: LSTM(" in capsys.readouterr().out
