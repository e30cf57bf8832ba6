"""feedback_sync_: the fused multi-layer sync op held bit for bit against its reference."""
import pytest
import torch

from soap_cuda.reference.feedback_sync import feedback_sync_ as ref_sync
from soap_cuda.reference.feedback_sync import sync_value
from soap_cuda.reference.philox import philox_normal

import soap_cuda
from conftest import devices, requires_cuda

op = torch.ops.soap_cuda.feedback_sync_.default

# shapes not divisible by the vector width (4 floats / 2 doubles / 8 halves), a single element,
# an empty layer, and a big one that spans many blocks
SHAPES = [(7, 13), (1, 1), (3, 5), (64, 96), (0, 4), (257, 129)]
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def make_layers(dtype, device="cpu", with_zeros=True):
    weights, mags, scales = [], [], []
    for i, shape in enumerate(SHAPES):
        w = torch.randn(shape, device=device).to(dtype)
        if with_zeros and w.numel() > 2:
            w.view(-1)[::7] = 0.0  # exact zeros: sign(0) = 0
        weights.append(w)
        mags.append(torch.randn(shape, device=device).to(dtype) if i % 2 == 0 else None)
        scales.append(1.0 if i % 3 else 0.37)
    b = [torch.full_like(w, 5.0) for w in weights]
    return weights, b, mags, torch.tensor(scales, dtype=torch.float64, device=device)


@pytest.mark.parametrize("dtype", DTYPES)
def test_matches_reference_bit_for_bit(dtype):
    weights, b_native, mags, scales = make_layers(dtype)
    b_ref = [t.clone() for t in b_native]
    op(weights, b_native, mags, scales)
    ref_sync(weights, b_ref, mags, scales)
    for got, want in zip(b_native, b_ref):
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rule_values(dtype):
    w = torch.randn(33, 17, dtype=dtype)
    w[0, :3] = 0.0
    m = torch.randn(33, 17, dtype=dtype)
    b1, b2, b3 = (torch.empty_like(w) for _ in range(3))
    op([w, w, w], [b1, b2, b3], [None, m, None],
       torch.tensor([1.0, 1.0, 0.25], dtype=torch.float64))
    assert torch.equal(b1, torch.sign(w))
    assert torch.equal(b2, torch.sign(w) * m.abs())
    assert torch.equal(b3, torch.sign(w) * 0.25)
    assert torch.all(b1[0, :3] == 0)


def test_nan_weight_gives_nan_feedback_and_inf_gives_sign():
    w = torch.tensor([[float("nan"), float("inf"), -float("inf"), -0.0, 2.0]])
    b = torch.empty_like(w)
    op([w], [b], [None], torch.ones(1, dtype=torch.float64))
    assert torch.isnan(b[0, 0]) and b[0, 1] == 1 and b[0, 2] == -1 and b[0, 3] == 0
    ref = sync_value(w, None, torch.ones((), dtype=torch.float64))
    assert torch.equal(torch.isnan(ref), torch.isnan(b))


def _masked_case(dtype, device):
    """make_layers with a due mask (layer 0 and 3 not due) and streams: layer 1 and 3 draw."""
    weights, b, mags, scales = make_layers(dtype, device)
    n = len(weights)
    due = torch.tensor([i not in (0, 3) for i in range(n)], device=device)
    rows = [(1, 123456789 + i, 7 * i) if i in (1, 3) else (0, 0, 0) for i in range(n)]
    rows[1] = (1, -5, 2**40)  # a negative seed (its two's complement) and a big offset
    mags = [None if row[0] else m for m, row in zip(mags, rows)]
    return weights, b, mags, scales, due, torch.tensor(rows, dtype=torch.int64, device=device)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_due_and_streams_match_reference_bit_for_bit(device, dtype):
    weights, b_native, mags, scales, due, streams = _masked_case(dtype, device)
    b_ref = [t.clone() for t in b_native]
    op(weights, b_native, mags, scales, due, streams)
    ref_sync(weights, b_ref, mags, scales, due, streams)
    for i, (got, want) in enumerate(zip(b_native, b_ref)):
        assert torch.equal(got, want), i
        if not due[i]:  # untouched
            assert torch.all(got == 5.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_drawn_magnitude_is_the_philox_stream(dtype):
    """A drawing row gives scale * sign(W) * |noise|, the noise exactly philox_normal_fill's
    tensor of (seed, offset) in W's dtype."""
    w = torch.randn(31, 9).to(dtype)
    b = torch.empty_like(w)
    op([w], [b], [None], torch.tensor([0.3], dtype=torch.float64), None,
       torch.tensor([[1, 42, 5]]))
    noise = philox_normal(42, 5, w.shape, dtype=dtype)
    if dtype != torch.float16:  # the op fills float32 and float64
        filled = torch.empty_like(w)
        torch.ops.soap_cuda.philox_normal_fill(filled, 42, 5)
        assert torch.equal(filled, noise)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    want = (torch.sign(w.to(acc)) * noise.to(acc).abs() * 0.3).to(dtype)
    assert torch.equal(b, want)


def test_due_all_false_writes_nothing_and_streams_on_the_cpu_are_read():
    w = [torch.randn(5, 4), torch.randn(3, 3)]
    b = [torch.zeros(5, 4), torch.zeros(3, 3)]
    op(w, b, [None, None], torch.ones(2, dtype=torch.float64), torch.zeros(2, dtype=torch.bool))
    assert all(torch.all(t == 0) for t in b)
    op(w, b, [None, None], torch.ones(2, dtype=torch.float64), None,
       torch.tensor([[0, 0, 0], [1, 3, 0]]))
    assert torch.equal(b[0], torch.sign(w[0]))
    assert torch.equal(torch.sign(b[1]), torch.sign(w[1])) and not torch.equal(b[1], torch.sign(w[1]))


def test_empty_list_is_a_no_op():
    op([], [], [], torch.empty(0, dtype=torch.float64))


def test_opcheck():
    weights, b, mags, scales = make_layers(torch.float32)
    torch.library.opcheck(op, (weights, b, mags, scales))
    weights, b, mags, scales, due, streams = _masked_case(torch.float32, "cpu")
    torch.library.opcheck(op, (weights, b, mags, scales, due, streams))


def _bad(case):
    w = [torch.randn(4, 5), torch.randn(3, 3)]
    b = [torch.empty(4, 5), torch.empty(3, 3)]
    m = [None, None]
    s = torch.ones(2, dtype=torch.float64)
    if case == "length":
        return w, b[:1], m, s
    if case == "shape":
        return w, [b[0], torch.empty(3, 4)], m, s
    if case == "dtype":
        return w, [b[0], b[1].double()], m, s
    if case == "mixed_weights":
        return [w[0], w[1].double()], b, m, s
    if case == "contiguous":
        return w, [torch.empty(5, 4).t(), b[1]], m, s
    if case == "magnitude":
        return w, b, [torch.randn(4, 4), None], s
    if case == "scales_dtype":
        return w, b, m, s.float()
    if case == "scales_len":
        return w, b, m, s[:1]
    if case == "alias":
        return w, [w[0], b[1]], m, s
    if case == "b_over_other_w":  # B of layer 1 inside layer 0's W
        big = torch.randn(4, 5)
        return [big, w[1]], [b[0], big.view(-1)[:9].view(3, 3)], m, s
    if case == "b_over_other_b":
        shared = torch.empty(20)
        return w, [shared.view(4, 5), shared[:9].view(3, 3)], m, s
    if case == "int":
        return [t.int() for t in w], [t.int() for t in b], m, s
    due = torch.ones(2, dtype=torch.bool)
    rows = torch.zeros(2, 3, dtype=torch.int64)
    if case == "due_dtype":
        return w, b, m, s, due.int()
    if case == "due_len":
        return w, b, m, s, due[:1]
    if case == "streams_dtype":
        return w, b, m, s, None, rows.int()
    if case == "streams_shape":
        return w, b, m, s, None, rows[:, :2].contiguous()
    if case == "draw_and_magnitude":
        return w, b, [torch.randn(4, 5), None], s, None, torch.tensor([[1, 0, 0], [0, 0, 0]])
    raise AssertionError(case)


@pytest.mark.parametrize("case,pattern", [
    ("length", r"'weights', 'b_matrices' and 'magnitudes' must have the same length"),
    ("shape", r"argument 'b_matrices\[1\]' must have the shape of 'weights\[1\]'"),
    ("dtype", r"argument 'b_matrices\[1\]' must have the dtype of 'weights\[1\]'"),
    ("mixed_weights", r"argument 'weights\[1\]' must have the dtype of 'weights\[0\]'"),
    ("contiguous", r"argument 'b_matrices\[0\]' must be contiguous"),
    ("magnitude", r"argument 'magnitudes\[0\]' must have the shape of 'weights\[0\]'"),
    ("scales_dtype", r"argument 'scales' must be float64"),
    ("scales_len", r"argument 'scales' must have one entry per layer \(2\)"),
    ("alias", r"argument 'b_matrices\[0\]' must not be the same memory as 'weights\[0\]'"),
    ("b_over_other_w", r"argument 'b_matrices\[1\]' must not share memory with 'weights\[0\]'"),
    ("b_over_other_b", r"argument 'b_matrices\[0\]' must not share memory with 'b_matrices\[1\]'"),
    ("int", r"argument 'weights\[0\]' must be a floating-point tensor"),
    ("due_dtype", r"argument 'due' must be bool"),
    ("due_len", r"argument 'due' must have one entry per layer \(2\)"),
    ("streams_dtype", r"argument 'streams' must be int64"),
    ("streams_shape", r"argument 'streams' must have shape \[2, 3\]"),
    ("draw_and_magnitude", r"argument 'magnitudes\[0\]' must be None where 'streams' row 0"),
])
def test_bad_input_is_rejected(case, pattern):
    with pytest.raises(RuntimeError, match=pattern):
        op(*_bad(case))


def test_layers_may_share_a_weight():
    w = torch.randn(4, 5)
    b = [torch.empty(4, 5), torch.empty(4, 5)]
    op([w, w], b, [None, None], torch.tensor([1.0, 2.0], dtype=torch.float64))
    assert torch.equal(b[1], 2 * b[0])


def _bits(t):
    return t.view(torch.int32 if t.element_size() == 4 else
                  torch.int64 if t.element_size() == 8 else torch.int16)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("dtype", DTYPES)
def test_signed_zero_magnitudes_give_the_reference_bits(device, dtype):
    # |-0.0| is +0.0: sign(w) * |m| is +0.0 for w > 0 and -0.0 for w < 0, whatever m's zero sign
    w = torch.tensor([1.0, -1.0, 2.0, -2.0, 0.0, 0.5] * 3, dtype=dtype, device=device)
    m = torch.tensor([-0.0, -0.0, 0.0, 0.0, -0.0, -3.0] * 3, dtype=dtype, device=device)
    b = torch.full_like(w, 7.0)
    scales = torch.tensor([1.5], dtype=torch.float64, device=device)
    op([w], [b], [m], scales)
    want = sync_value(w, m, scales[0])
    assert torch.equal(_bits(b.cpu()), _bits(want.cpu()))
    assert _bits(b)[0].item() == 0  # +0.0 exactly


@pytest.mark.parametrize("device", devices())
def test_sync_between_forward_and_backward_is_caught_by_autograd(device):
    # the sync writes B in place; a backward that saved the old B must refuse, as autograd does
    # for any in-place change of a saved tensor, on every backend alike
    torch.manual_seed(0)
    model = torch.nn.Sequential(soap_cuda.FALinear(6, 5, feedback="sign"), torch.nn.ReLU(),
                                soap_cuda.FALinear(5, 3, feedback="sign")).to(device)
    loss = model(torch.randn(4, 6, device=device)).square().sum()
    soap_cuda.sync_feedback(model)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


@pytest.mark.parametrize("device", devices())
def test_sync_bumps_each_b_version(device):
    weights, b, mags, scales = make_layers(torch.float32, device)
    before = [t._version for t in b]
    op(weights, b, mags, scales)
    assert [t._version for t in b] == [v + 1 for v in before]


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_matches_cpu_bit_for_bit(dtype):
    weights, b_cpu, mags, scales = make_layers(dtype)
    to = lambda ts: [t.cuda() if t is not None else None for t in ts]
    b_cuda = to(b_cpu)
    op(to(weights), b_cuda, to(mags), scales.cuda())
    op(weights, b_cpu, mags, scales)
    for got, want in zip(b_cuda, b_cpu):
        assert torch.equal(got.cpu(), want)


@requires_cuda
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_takes_scales_from_the_cpu(dtype):
    """Scales on the CPU ride in the launch's layer table: same bits as device scales."""
    weights, b_cpu, mags, scales = make_layers(dtype)
    to = lambda ts: [t.cuda() if t is not None else None for t in ts]
    b_host_scales, b_device_scales = to(b_cpu), to(b_cpu)
    op(to(weights), b_host_scales, to(mags), scales)
    op(to(weights), b_device_scales, to(mags), scales.cuda())
    op(weights, b_cpu, mags, scales)
    for host, device, want in zip(b_host_scales, b_device_scales, b_cpu):
        assert torch.equal(host.cpu(), want) and torch.equal(device.cpu(), want)


@requires_cuda
def test_cuda_unaligned_views():
    """Pointers off the 16-byte grid take the scalar path; results must not change."""
    base_w, base_b = torch.randn(1001, device="cuda"), torch.zeros(1001, device="cuda")
    w, b = base_w[1:].view(40, 25), base_b[1:].view(40, 25)
    op([w], [b], [None], torch.ones(1, dtype=torch.float64, device="cuda"))
    assert torch.equal(b, torch.sign(w)) and base_b[0] == 0


@requires_cuda
def test_cuda_grid_stride_loops_match_cpu():
    """Layers of millions of elements: each thread goes round the unrolled vector loop (and, for
    the unaligned view, the scalar loop) more than once, its last step partly out of range (on
    an H200 one resident wave covers about 2.2M vectors per step)."""
    w_cpu = [torch.randn(4099, 4097), torch.randn(1 + 1500 * 1001)[1:].view(1500, 1001)]
    m_cpu = [torch.randn(4099, 4097), None]
    b_cpu = [torch.empty_like(w) for w in w_cpu]
    scales = torch.tensor([0.5, 1.5], dtype=torch.float64)
    base = torch.zeros(1 + 1500 * 1001, device="cuda")
    b_cuda = [torch.empty_like(w_cpu[0], device="cuda"), base[1:].view(1500, 1001)]
    w_cuda = [w_cpu[0].cuda(), torch.cat([torch.zeros(1), w_cpu[1].reshape(-1)]).cuda()[1:]
              .view(1500, 1001)]
    op(w_cuda, b_cuda, [m_cpu[0].cuda(), None], scales.cuda())
    op(w_cpu, b_cpu, m_cpu, scales)
    for got, want in zip(b_cuda, b_cpu):
        assert torch.equal(got.cpu(), want)
    assert base[0] == 0


# --- the CUDA launch's block partition (plain C++, checked here without a GPU) ---

def _partition(numels, elems_per_block=1024, budget=1056):
    native = pytest.importorskip("soap_cuda._C", reason="the partition is native code; "
                                 "the Python fallback has no CUDA launch to partition")
    return native._sync_block_partition(numels, elems_per_block, budget)


def _blocks(first):
    return [b - a for a, b in zip(first, first[1:])]


@pytest.mark.skipif(soap_cuda.backend() == "python", reason="no native library loaded")
@pytest.mark.parametrize("numels", [
    [16_777_216] + [100] * 50,                       # one big layer among many small ones
    [1_000_000, 10, 0, 3_000_000, 1, 250_000],       # uneven, with an empty layer
    [1024] * 7,                                      # small: every layer's work fits its blocks
    [0, 0],
    [2**40, 3],                                      # budget * numel past 2^63
])
def test_sync_blocks_follow_layer_size(numels):
    per_block, budget = 1024, 1056
    first = _partition(numels, per_block, budget)
    blocks = _blocks(first)
    assert first[0] == 0 and len(first) == len(numels) + 1 and all(b >= 0 for b in blocks)
    total = sum(numels)
    for n, k in zip(numels, blocks):
        needed = -(-n // per_block)
        assert k <= needed                            # never more blocks than work
        assert (k >= 1) == (n > 0)                    # every non-empty layer gets one
        if 0 < needed:                                # else its share of the budget, rounded up
            assert k == min(needed, max(1, -(-budget * n // total)))
    assert first[-1] <= budget + len(numels)


@pytest.mark.skipif(soap_cuda.backend() == "python", reason="no native library loaded")
def test_largest_layer_gets_most_of_the_gpu():
    # before: the blocks were split evenly, so the 16.8M-element layer got 1/51 of them
    first = _partition([16_777_216] + [100] * 50, 1024, 1056)
    assert _blocks(first)[0] >= 0.95 * 1056


@pytest.mark.skipif(soap_cuda.backend() == "python", reason="no native library loaded")
def test_partition_rejects_bad_arguments():
    with pytest.raises(ValueError):
        _partition([-1])
    with pytest.raises(ValueError):
        _partition([5], 0, 10)


@requires_cuda
@pytest.mark.cuda_graphs
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_replays_follow_due_flags_streams_and_weights(dtype):
    """A captured sync reads its due flags, streams and weights at every replay (its layer table
    is the cached plan of the eager call before the capture)."""
    weights, b, mags, scales, due, streams = _masked_case(dtype, "cuda")
    op(weights, b, mags, scales, due, streams)  # builds the plan
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        op(weights, b, mags, scales, due, streams)
    for trial in range(3):
        for w in weights:
            w.copy_(torch.randn_like(w, dtype=torch.float32).to(dtype))
        due.copy_(torch.rand(due.shape, device="cuda") < 0.6)
        streams[:, 2] += 1
        want = [t.cpu() for t in b]
        ref_sync([w.cpu() for w in weights], want,
                 [m.cpu() if m is not None else None for m in mags], scales.cpu(), due.cpu(),
                 streams.cpu())
        graph.replay()
        torch.cuda.synchronize()
        for i, (got, ref) in enumerate(zip(b, want)):
            assert torch.equal(got.cpu(), ref), (trial, i)
