"""handlstm.testing: its strategies reach every flag, its comparator catches what it must."""

import subprocess
import sys
import textwrap
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from handlstm import HandLSTM
from handlstm.testing import INPUT_KINDS, assert_lstm_close, cell_cases, lstm_cases

F64 = torch.float64
DRAWS = 300


def draw_many(strategy, n=DRAWS):
    """``n`` examples from ``strategy``, deterministically (hypothesis's find-based drawing)."""
    drawn = []

    @settings(
        max_examples=n,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def collect(value):
        drawn.append(value)

    collect()
    return drawn


@pytest.fixture(scope="module")
def lstm_draws():
    return draw_many(lstm_cases(dtypes=(torch.float32, F64), dropout=True))


def test_lstm_cases_cover_every_flag(lstm_draws):
    seen = Counter()
    for case in lstm_draws:
        c = case.config
        seen.update(
            [
                ("bias", c["bias"]),
                ("batch_first", c["batch_first"]),
                ("bidirectional", c["bidirectional"]),
                ("proj", c["proj_size"] > 0),
                ("layers>1", c["num_layers"] > 1),
                ("dropout", c["dropout"] > 0),
                ("hx", case.hx is not None),
                ("kind", case.kind),
                ("dtype", case.dtype),
            ]
        )
    for flag in ("bias", "batch_first", "bidirectional", "proj", "layers>1", "dropout", "hx"):
        for value in (True, False):
            assert seen[(flag, value)] > 0, f"{flag}={value} never drawn"
    for kind in INPUT_KINDS:
        assert seen[("kind", kind)] > 0, f"input kind {kind} never drawn"
    for dtype in (torch.float32, F64):
        assert seen[("dtype", dtype)] > 0, f"{dtype} never drawn"


def test_lstm_cases_inputs_fit_their_config(lstm_draws):
    for case in lstm_draws[:60]:
        c = case.config
        data = case.input.data if isinstance(case.input, PackedSequence) else case.input
        assert data.dtype == case.dtype and data.size(-1) == c["input_size"]
        assert isinstance(case.input, PackedSequence) == case.kind.startswith("packed")
        if case.kind == "unbatched":
            assert case.input.dim() == 2
        if case.kind == "packed_unsorted":
            assert case.input.sorted_indices is not None
        if case.hx is not None:
            states = c["num_layers"] * (2 if c["bidirectional"] else 1)
            assert case.hx[0].size(0) == states
            assert case.hx[0].size(-1) == (c["proj_size"] or c["hidden_size"])
            assert case.hx[1].size(-1) == c["hidden_size"]
        # and torch accepts it
        nn_module = case.make(nn.LSTM).eval()
        nn_module(case.input, case.hx)


def test_packed_unsorted_draws_really_unsorted_lengths(lstm_draws):
    unsorted = [
        case.lengths
        for case in lstm_draws
        if case.kind == "packed_unsorted" and case.lengths != sorted(case.lengths, reverse=True)
    ]
    assert unsorted, "packed_unsorted never drew lengths out of order"


def test_cell_cases_cover_every_flag():
    seen = Counter()
    for case in draw_many(cell_cases(dtypes=(torch.float32, F64)), 150):
        seen.update(
            [
                ("bias", case.config["bias"]),
                ("batched", case.batched),
                ("hx", case.hx is not None),
                ("dtype", case.dtype),
            ]
        )
        assert case.input.dim() == (2 if case.batched else 1)
    for flag in ("bias", "batched", "hx"):
        for value in (True, False):
            assert seen[(flag, value)] > 0, f"{flag}={value} never drawn"
    assert seen[("dtype", torch.float32)] and seen[("dtype", F64)]


def test_fixed_pins_flags_and_with_hx_pins_the_state():
    pinned = {"bidirectional": False, "proj_size": 0, "num_layers": 2}
    for case in draw_many(lstm_cases(fixed=pinned, with_hx=True), 40):
        assert all(case.config[k] == v for k, v in pinned.items())
        assert case.hx is not None
    for case in draw_many(cell_cases(fixed={"bias": False, "hidden_size": 3}), 20):
        assert case.config["bias"] is False and case.config["hidden_size"] == 3
    with pytest.raises(ValueError, match="unknown keys"):
        draw_many(lstm_cases(fixed={"bidirectonal": False}), 1)


# -- assert_lstm_close ----------------------------------------------------------------------------


def pair(**config):
    torch.manual_seed(0)
    expected = nn.LSTM(3, 4, dtype=F64, **config)
    actual = HandLSTM(3, 4, dtype=F64, **config)
    actual.load_state_dict(expected.state_dict())
    return actual, expected


def test_passes_on_equal_modules_and_leaves_inputs_alone():
    actual, expected = pair(num_layers=2, bidirectional=True)
    x = torch.randn(5, 2, 3, dtype=F64)
    hx = (torch.randn(4, 2, 4, dtype=F64), torch.randn(4, 2, 4, dtype=F64))
    copies = [t.clone() for t in (x, *hx)]
    assert_lstm_close(actual, expected, x, hx)
    assert_lstm_close(expected, expected, x, hx)
    for before, after in zip(copies, (x, *hx), strict=True):
        assert torch.equal(before, after) and after.grad is None


def test_fails_naming_the_tensor_index_and_values_on_one_perturbed_weight():
    actual, expected = pair()
    with torch.no_grad():
        actual.weight_hh_l0[5, 2] += 1e-6
    x = torch.randn(5, 2, 3, dtype=F64)
    with pytest.raises(AssertionError) as error:
        assert_lstm_close(actual, expected, x)
    message = str(error.value)
    assert "output:" in message and "h_n:" in message and "c_n:" in message
    assert "grad.weight_hh_l0" in message
    assert "at index (" in message and "actual " in message and "expected " in message


def test_reports_the_perturbed_element_of_an_output_gradient():
    actual, expected = pair()
    x = torch.randn(4, 1, 3, dtype=F64)
    with torch.no_grad():
        actual.bias_hh_l0[0] += 1e-3
    with pytest.raises(AssertionError, match=r"output: max abs difference [0-9.e+-]+; at index"):
        assert_lstm_close(actual, expected, x)


def test_fails_on_a_swapped_gate_order():
    """Reordering weight_ih's gate blocks (i, f, g, o) -> (f, i, g, o) must be caught."""
    actual, expected = pair()
    with torch.no_grad():
        i, f, g, o = actual.weight_ih_l0.chunk(4, 0)
        actual.weight_ih_l0.copy_(torch.cat([f, i, g, o], 0))
    with pytest.raises(AssertionError, match="output") as error:
        assert_lstm_close(actual, expected, torch.randn(5, 2, 3, dtype=F64))
    assert "grad.weight_ih_l0" in str(error.value)


def test_a_missing_parameter_is_named():
    actual, expected = pair()
    actual.weight_hh_l0.requires_grad_(False)
    with pytest.raises(AssertionError, match="grad.weight_hh_l0: missing from the actual"):
        assert_lstm_close(actual, expected, torch.randn(5, 2, 3, dtype=F64))


def test_float32_tolerance_is_looser_than_float64():
    torch.manual_seed(0)
    expected = nn.LSTM(3, 4)
    actual = HandLSTM(3, 4)
    actual.load_state_dict(expected.state_dict())
    assert_lstm_close(actual, expected, torch.randn(5, 2, 3))
    with torch.no_grad():
        actual.weight_ih_l0[0, 0] += 1e-3
    with pytest.raises(AssertionError):
        assert_lstm_close(actual, expected, torch.randn(5, 2, 3))


@given(lstm_cases(max_size=5, max_layers=2, max_len=4, max_batch=3))
@settings(max_examples=15)
def test_strategies_drive_assert_lstm_close(case):
    expected = case.make(nn.LSTM)
    actual = case.make(HandLSTM, state_dict=expected.state_dict())
    assert_lstm_close(actual, expected, case.input, case.hx)


@given(st.data())
@settings(max_examples=5)
def test_make_loads_a_state_dict(data):
    case = data.draw(lstm_cases(max_layers=2))
    source = case.make(nn.LSTM)
    copy = case.make(HandLSTM, state_dict=source.state_dict())
    for key, value in source.state_dict().items():
        assert torch.equal(copy.state_dict()[key], value)


# -- optional dependency --------------------------------------------------------------------------


def test_import_without_hypothesis_says_how_to_install():
    code = textwrap.dedent(
        """
        import sys
        sys.modules["hypothesis"] = None  # makes `import hypothesis` raise ImportError
        import handlstm  # the package itself needs no hypothesis
        from handlstm import HandLSTM
        try:
            import handlstm.testing
        except ImportError as error:
            print("IMPORT-ERROR:", error)
        else:
            print("imported")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "IMPORT-ERROR:" in result.stdout
    assert "pip install hypothesis" in result.stdout
    assert "handlstm[test]" in result.stdout


# -- the first comparison is cheap ----------------------------------------------------------------


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 1, 4), (1, 1, 1), (4, 3, 2, 5)])
def test_unravel_points_at_the_flat_element(shape):
    from handlstm.tools.compare import unravel

    t = torch.arange(torch.Size(shape).numel()).reshape(shape)
    for flat in range(t.numel()):
        assert int(t[unravel(flat, shape)]) == flat


def test_a_first_failing_comparison_imports_no_sympy():
    """torch.unravel_index imports sympy on first use (~0.5 s): a first property-test example
    then missed hypothesis's 200 ms deadline. The comparator must not need it."""
    code = textwrap.dedent(
        """
        import sys
        import torch
        from handlstm import HandLSTM
        from handlstm.testing import assert_lstm_close
        ref = torch.nn.LSTM(1, 1).double()
        mine = HandLSTM(1, 1).double()
        mine.load_state_dict(ref.state_dict())
        x = torch.randn(1, 1, 1, dtype=torch.float64)
        assert_lstm_close(mine, ref, x)
        with torch.no_grad():
            mine.weight_ih_l0.add_(1.0)
        try:
            assert_lstm_close(mine, ref, x)
        except AssertionError as error:
            print("FAILED-AS-EXPECTED", "at index (" in str(error))
        print("SYMPY-IMPORTED", "sympy" in sys.modules)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "FAILED-AS-EXPECTED True" in result.stdout
    assert "SYMPY-IMPORTED False" in result.stdout


# -- other constructors and parameter names -------------------------------------------------------


class Renamed(nn.Module):
    """An LSTM whose constructor and parameters are named its own way (a HandLSTM inside)."""

    def __init__(self, n_in: int, units: int, layers: int = 1) -> None:
        super().__init__()
        self.core = HandLSTM(n_in, units, layers)

    def forward(self, input, hx=None):
        return self.core(input, hx)


RENAMED_ARGS = {"input_size": "n_in", "hidden_size": "units", "num_layers": "layers"} | {
    name: None for name in ("bias", "batch_first", "dropout", "bidirectional", "proj_size", "dtype")
}
NN_DEFAULTS = {"bias": True, "batch_first": False, "bidirectional": False, "proj_size": 0}


def core_name(name: str) -> str:
    return "core." + name


@given(lstm_cases(max_size=5, max_layers=2, max_len=4, max_batch=3, fixed=NN_DEFAULTS))
@settings(max_examples=10)
def test_make_adapts_other_argument_and_parameter_names(case):
    oracle = case.make(nn.LSTM)
    mine = case.make(
        Renamed, oracle.state_dict(), arguments=RENAMED_ARGS, parameter_names=core_name
    )
    assert next(mine.parameters()).dtype == case.dtype  # dtype left out: cast after building
    assert_lstm_close(mine, oracle, case.input, case.hx, parameter_names=core_name)


def test_renamed_parameters_are_compared_not_skipped():
    torch.manual_seed(0)
    oracle = nn.LSTM(3, 4, dtype=F64)
    mapping = {f"{kind}_l0": f"core.{kind}_l0" for kind in ("weight_ih", "weight_hh")}
    mapping |= {"bias_ih_l0": "core.bias_ih_l0", "bias_hh_l0": "core.bias_hh_l0"}
    mine = Renamed(3, 4).double()
    mine.load_state_dict({mapping[k]: v for k, v in oracle.state_dict().items()})
    x = torch.randn(5, 2, 3, dtype=F64)
    with pytest.raises(AssertionError, match="grad.weight_ih_l0: missing from the actual"):
        assert_lstm_close(mine, oracle, x)  # without the mapping the names do not meet
    assert_lstm_close(mine, oracle, x, parameter_names=mapping)
    with torch.no_grad():
        mine.core.weight_hh_l0[3, 1] += 1e-6
    with pytest.raises(AssertionError, match=r"grad\.weight_hh_l0: max abs difference"):
        assert_lstm_close(mine, oracle, x, parameter_names=mapping)


def test_leaving_out_an_argument_the_case_needs_is_refused_with_the_fix():
    case = draw_many(lstm_cases(fixed=NN_DEFAULTS | {"bidirectional": True}), 1)[0]
    with pytest.raises(ValueError, match=r"bidirectional=True.*fixed=\{'bidirectional': False\}"):
        case.make(Renamed, arguments=RENAMED_ARGS)
    with pytest.raises(ValueError, match="not one of the case's arguments"):
        case.make(Renamed, arguments={"hidden": "units"})


def test_cell_case_make_adapts_arguments():
    class Cell(nn.Module):
        def __init__(self, n_in: int, units: int) -> None:
            super().__init__()
            self.cell = nn.LSTMCell(n_in, units)

        def forward(self, input, hx=None):
            return self.cell(input, hx)

    arguments = {"input_size": "n_in", "hidden_size": "units", "bias": None, "dtype": None}
    for case in draw_many(cell_cases(fixed={"bias": True}), 5):
        oracle = case.make(nn.LSTMCell)
        mine = case.make(
            Cell, oracle.state_dict(), arguments=arguments, parameter_names=lambda n: "cell." + n
        )
        assert_lstm_close(mine, oracle, case.input, case.hx, parameter_names=lambda n: "cell." + n)


# -- not a module: FunctionLSTM -------------------------------------------------------------------


def load_example(name: str):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "examples" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def not_a_module():
    return load_example("not_a_module")


def test_a_function_of_the_weights_is_compared_gradients_included(not_a_module):
    from handlstm.testing import FunctionLSTM

    not_a_module.test_function_of_weights_matches_nn_lstm()
    torch.manual_seed(0)
    oracle = nn.LSTM(3, 4, dtype=F64)
    state = oracle.state_dict()
    x = torch.randn(5, 2, 3, dtype=F64)
    mine = FunctionLSTM(not_a_module.lstm_from_weights, state)
    assert [n for n, _ in mine.named_parameters()] == list(state)
    assert_lstm_close(mine, oracle, x)
    with torch.no_grad():
        mine.weight_hh_l0[2, 2] += 1e-6  # the function reads the wrapper's current weights
    with pytest.raises(AssertionError, match=r"grad\.weight_hh_l0"):
        assert_lstm_close(mine, oracle, x)
    for value in state.values():  # the state dict was copied, not shared
        assert not value.requires_grad


def test_an_exported_program_is_compared(not_a_module):
    assert "matches nn.LSTM" in not_a_module.check_exported_program()


@pytest.mark.slow
def test_an_onnxruntime_session_is_compared(not_a_module):
    for name in ("onnx", "onnxscript", "onnxruntime"):
        pytest.importorskip(name, reason=f"{name} is not installed (pip install -e '.[onnx]')")
    assert "matches nn.LSTM (outputs, states)" in not_a_module.check_onnx_session()


# -- what a failing user test shows ---------------------------------------------------------------

USER_TEST = """
from hypothesis import given, settings
from handlstm import HandLSTM
from handlstm.testing import assert_lstm_close, lstm_cases


class Buggy(HandLSTM):
    def forward(self, input, hx=None):
        out, (h, c) = super().forward(input, hx)
        if self.num_layers > 2:
            h = h * 1.001  # the bug: only deep models
        return out, (h, c)


@settings(database=None, max_examples=200, derandomize=True)
@given(lstm_cases(kinds=("dense",), fixed={"bidirectional": False, "proj_size": 0}))
def test_mine(case):
    oracle = case.make(HandLSTM)
    mine = case.make(Buggy, state_dict=oracle.state_dict())
    assert_lstm_close(mine, oracle, case.input, case.hx)
"""


def test_a_failing_user_test_reports_the_users_code_not_the_comparators(tmp_path):
    """pytest hides the comparator's frames (its source was printed, 45 lines), and hypothesis's
    explanation ("lines always and only run by failing test cases") names the user's bug line,
    not handlstm's failure branch."""
    import os
    from pathlib import Path

    (tmp_path / "test_user.py").write_text(USER_TEST)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop("HYPOTHESIS_PROFILE", None)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", os.devnull]
        + ["--rootdir", str(tmp_path), str(tmp_path / "test_user.py")],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 1 and "tensors differ" in out, out
    assert "h_n: max abs difference" in out
    assert "def assert_lstm_close" not in out and "compare_modules(" not in out, out
    explanation = out[out.index("Explanation:") :].split("\n\n")[0]
    assert "test_user.py:11" in explanation, explanation
    assert "handlstm" not in explanation.replace("from handlstm", ""), explanation
