"""Exact per-sample gradients (and their norms) from HandLSTM's own backward pass, for
opacus's hooks, functorch and ghost modes. Knows nothing about opacus:
:mod:`handlstm.interop.opacus` supplies a :class:`~handlstm.engines.per_sample.tape.Sink` that
says when to record and what to do with the results.

How it works, for one forward call of a module:

* the whole call is one autograd node (``blocks.BlockRun``): its forward runs the composed
  path on detached copies of the inputs and parameters with grad enabled (an inner graph), its
  backward differentiates that inner graph once with every incoming gradient (output, h_n, c_n,
  any subset, packed or not), so it is the one place that sees the whole backward of this call;
* every linear op of the composed path (the sequence-wide input GEMM, each step's recurrent and
  projection GEMM) goes through a tap (``taps``): ``F.linear`` forward, and a backward that
  records the gradient of its output next to the (detached) input it saw, and skips the weight
  gradient;
* after the inner backward each weight's per-sample gradient is one batched contraction over
  time, ``einsum("kng,kni->ngi", d_out, x)`` (biases: the sum over time of ``d_gates``), its sum
  over the batch is the ordinary gradient, and ghost norms come from per-sample Gram matrices:
  ``||sum_k g_k x_k^T||^2 = sum_{k,j} (g_k . g_j)(x_k . x_j)``;
* a second backward through the same forward (ghost clipping's clipped pass) whose incoming
  gradient is a per-sample multiple of the first one's is replayed from the first pass's
  records (``BlockRun.backward``): one GEMM per weight, no second pass through time.

The files, top down: ``calls`` (the modules' forward calls in per-sample mode) > ``blocks``
(the one autograd node per call, the replay) > ``tape`` (one call's records and their
gradients) > ``taps`` (the recording ops), ``norms`` (the gradient math).
"""
