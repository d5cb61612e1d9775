"""Several threads calling one module at once (eval mode, no_grad) get the serial results."""

from __future__ import annotations

import threading

import torch
from torch.nn.utils.rnn import pack_padded_sequence

from ._helpers import cell_pair, pair, sequence, states

THREADS = 6
CALLS = 5


def inputs(module, count: int):
    """Different inputs per thread: dense with hx, dense without, packed."""
    found = []
    for i in range(count):
        x = sequence(seed=100 + i, length=3 + i % 4)
        if i % 3 == 0:
            found.append((x, states(module, seed=200 + i)))
        elif i % 3 == 1:
            found.append((x, None))
        else:
            lengths = torch.tensor([x.size(0), 2, 1])
            found.append((pack_padded_sequence(x, lengths, enforce_sorted=False), None))
    return found


def flatten(result) -> list[torch.Tensor]:
    if isinstance(result[1], tuple):
        output, (h, c) = result
        data = output.data if hasattr(output, "batch_sizes") else output
        return [data, h, c]
    return list(result)


def run_concurrently(module, cases) -> list[list[list[torch.Tensor]]]:
    barrier = threading.Barrier(len(cases))
    results: list = [None] * len(cases)
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            input, hx = cases[index]
            barrier.wait(timeout=30)
            mine = []
            with torch.no_grad():
                for _ in range(CALLS):
                    mine.append(flatten(module(input, hx)))
            results[index] = mine
        except BaseException as error:  # noqa: BLE001 - reported in the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(cases))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not errors, errors
    return results


def test_threads_get_serial_results_lstm():
    module, _ = pair()
    module.eval()
    cases = inputs(module, THREADS)
    with torch.no_grad():
        serial = [flatten(module(input, hx)) for input, hx in cases]
    concurrent = run_concurrently(module, cases)
    for index, calls in enumerate(concurrent):
        for call in calls:
            for got, want in zip(call, serial[index], strict=True):
                assert torch.equal(got, want), f"thread {index} got a different result"


def test_threads_get_serial_results_cell():
    module, _ = cell_pair()
    module.eval()
    gen = torch.Generator().manual_seed(0)
    cases = [(torch.randn(4, 3, generator=gen, dtype=torch.float64), None) for _ in range(THREADS)]
    with torch.no_grad():
        serial = [flatten(module(x, hx)) for x, hx in cases]
    concurrent = run_concurrently(module, cases)
    for index, calls in enumerate(concurrent):
        for call in calls:
            for got, want in zip(call, serial[index], strict=True):
                assert torch.equal(got, want)
