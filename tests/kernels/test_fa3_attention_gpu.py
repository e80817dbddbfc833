"""FA3 attention on a Hopper GPU against its oracles (skipped without one, or without the
fa3-fwd wheel): the e4m3 kernel against ``fp8_attention_reference``, bf16 FA3 against
SDPA, compiled and graph-captured calls, and a PixArt denoiser served through each."""

from __future__ import annotations

import pytest
import torch

from trdq import primitives as P
from trdq.kernels import fa3_attention as fa3

RUNS, WHY = fa3.fa3_status("cuda") if torch.cuda.is_available() else (False, "needs CUDA")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not RUNS, reason=WHY)]

SHAPES = [(1, 1024, 4, 72), (2, 777, 3, 64), (1, 1024, 2, 128), (64, 16, 4, 72)]


def _qkv(b, s, h, d, seed=0, k_offset=0.0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v = (torch.randn(b, s, h, d, device="cuda", generator=g) for _ in range(3))
    return q.bfloat16(), (k + k_offset).bfloat16(), v.bfloat16()


@pytest.mark.parametrize("shape", SHAPES)
def test_fp8_kernel_matches_its_oracle(shape):
    q, k, v = _qkv(*shape, k_offset=3.0)
    out = fa3.fa3_fp8_attention(q, k, v)
    assert out.shape == q.shape and out.dtype == torch.bfloat16
    ref = fa3.fp8_attention_reference(q.float(), k.float(), v.float())
    # same codes and scales; only the order of the online softmax and bf16 output differ
    assert P.sqnr_db(ref, out.float()) > 30
    exact = fa3.sdpa_attention(q.float(), k.float(), v.float())
    assert P.sqnr_db(exact, out.float()) > 22


@pytest.mark.parametrize("shape", SHAPES)
def test_bf16_fa3_matches_sdpa(shape):
    q, k, v = _qkv(*shape)
    exact = fa3.sdpa_attention(q.float(), k.float(), v.float())
    assert P.sqnr_db(exact, fa3.fa3_attention(q, k, v).float()) > 40


def test_fp8_attention_compiles_and_replays_from_a_cuda_graph():
    q, k, v = _qkv(2, 512, 4, 72)
    eager = fa3.fa3_fp8_attention(q, k, v)
    compiled = torch.compile(fa3.fa3_fp8_attention, fullgraph=True)
    assert P.sqnr_db(eager.float(), compiled(q, k, v).float()) > 35
    static = [x.clone() for x in (q, k, v)]
    fa3.fa3_fp8_attention(*static)  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fa3.fa3_fp8_attention(*static)
    for dst, src in zip(static, _qkv(2, 512, 4, 72, seed=5), strict=True):
        dst.copy_(src)
    graph.replay()
    assert P.sqnr_db(fa3.fa3_fp8_attention(*static).float(), out.float()) > 60


@pytest.mark.parametrize("backend", ["fa3", "fp8"])
def test_pixart_denoiser_through_each_backend_stays_close_to_sdpa(backend):
    from trdq.nn.attention import set_attention_backend
    from trdq.testing.tiny import TEXT_DIM, tiny_pixart_transformer

    model = tiny_pixart_transformer(hidden=128, sample_size=32).cuda().bfloat16()
    g = torch.Generator(device="cuda").manual_seed(1)
    inputs = {
        "hidden_states": torch.randn(2, 4, 32, 32, device="cuda", generator=g).bfloat16(),
        "encoder_hidden_states": torch.randn(2, 5, TEXT_DIM, device="cuda", generator=g).bfloat16(),
        "timestep": torch.tensor([500, 500], device="cuda"),
        "added_cond_kwargs": {"resolution": None, "aspect_ratio": None},
    }
    with torch.inference_mode():
        expected = model(**inputs).sample.float()
        report = set_attention_backend(model, backend)
        assert len(report.replaced) == 2
        got = model(**inputs).sample.float()
    assert P.sqnr_db(expected, got) > (35 if backend == "fa3" else 25)


@pytest.mark.parametrize("family", ["flux", "wan"])
def test_family_denoisers_through_fp8_attention_stay_close_to_sdpa(family):
    """FLUX's joint and Wan's self-attention take FA3 e4m3 inside diffusers' processors
    (head dim 64 here), compiled, and stay close to diffusers' SDPA."""
    from trdq.nn.attention import set_attention_backend
    from trdq.testing.tiny_families import tiny_flux_pipeline, tiny_wan_pipeline

    pipe = (tiny_flux_pipeline if family == "flux" else tiny_wan_pipeline)(hidden=128)
    pipe.to("cuda", torch.bfloat16)
    call = {"height": 64, "width": 64, "max_sequence_length": 16, "output_type": "latent",
            "num_inference_steps": 2, "guidance_scale": 3.5}
    if family == "wan":
        call["num_frames"] = 5

    def run():
        with torch.inference_mode():
            return pipe(["a red circle"], generator=torch.Generator().manual_seed(0),
                        **call)[0].float()

    expected = run()
    report = set_attention_backend(pipe.transformer, "fp8")
    assert report.replaced
    pipe.transformer.compile()
    assert P.sqnr_db(expected, run()) > 20


def test_static_kernel_matches_its_oracle_compiled_and_from_a_cuda_graph(monkeypatch):
    """``StaticFp8Attention`` (statistics recorded on one input, per CFG half) on FA3
    against the oracle with the same statistics; compiled, and replayed from a graph
    after the context's group tensor changed on the device."""
    from trdq.nn import static_attention
    from trdq.nn.static_attention import AttentionRecorder
    from trdq.timestep import QuantContext

    # 1024 tokens: below the served threshold, which would send the call to SDPA
    monkeypatch.setattr(static_attention, "STATIC_MIN_TOKENS", 0)

    context = QuantContext(num_groups=2)
    context.cfg_active = True
    recorder = AttentionRecorder(fa3.sdpa_attention, context)
    inputs = {}
    for group in (0, 1):
        context.set_group(group, torch.device("cuda"))
        inputs[group] = _qkv(2, 1024, 4, 72, seed=group, k_offset=2.0 + group)
        recorder(*inputs[group])
    static = recorder.freeze(num_groups=2)
    for group in (0, 1):
        context.set_group(group, torch.device("cuda"))
        q, k, v = inputs[group]
        ref = fa3.fp8_attention_reference(q.float(), k.float(), v.float(),
                                          stats=static.stats(2))
        assert P.sqnr_db(ref, static(q, k, v).float()) > 30
    compiled = torch.compile(static.__call__, fullgraph=True)
    context.set_group(0, torch.device("cuda"))
    buffers = [x.clone() for x in inputs[0]]
    compiled(*buffers)  # warm-up outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = compiled(*buffers)
    context.set_group(1, torch.device("cuda"))  # in place: the graph reads the new group
    for dst, src in zip(buffers, inputs[1], strict=True):
        dst.copy_(src)
    graph.replay()
    assert P.sqnr_db(static(*inputs[1]).float(), out.float()) > 35


def test_one_launch_casts_match_the_torch_ops_on_the_gpu(monkeypatch):
    """``+tritoncast``: the Triton kernel's codes against ``_to_e4m3``'s (Triton's float32
    division may round a quotient differently: a code one step apart, rarely), and the
    static kernel's output with it against without it."""
    from trdq.nn import static_attention
    from trdq.nn.static_attention import AttentionRecorder
    from trdq.timestep import QuantContext

    # 1000 tokens: below the served threshold, where both calls would be SDPA's
    monkeypatch.setattr(static_attention, "STATIC_MIN_TOKENS", 0)

    qkv = torch.randn(2, 1000, 3 * 4 * 72, device="cuda").bfloat16() * 3
    q, k, v = (x.view(2, 1000, 4, 72) for x in qkv.chunk(3, dim=-1))
    stats = fa3.attention_input_stats(q, k, v)
    theirs = fa3.quantize_attention_inputs(q, k, v, stats)[0]
    ours = fa3._quantize_in_one_launch(q, k, v, stats)[0]
    for a, b in zip(ours, theirs, strict=True):
        steps = (a.float() - b.float()).abs() / b.float().abs().clamp_min(2**-6) * 8
        assert (a.float() != b.float()).float().mean() < 1e-3 and steps.max() <= 1.01
    context = QuantContext()
    recorder = AttentionRecorder(fa3.sdpa_attention, context)
    recorder(q, k, v)
    static = recorder.freeze(num_groups=1)
    expected = static(q, k, v)
    fa3.set_triton_cast(True)
    try:
        got = static(q, k, v)
    finally:
        fa3.set_triton_cast(False)
    assert P.sqnr_db(expected.float(), got.float()) > 40


def test_flux_prologue_processor_matches_diffusers_processor_compiled(monkeypatch):
    """``+fusedrope``: tiny FLUX (head dim 64) with static FP8 attention, the fused prologue
    against diffusers' processor on the same statistics, both through FA3, compiled."""
    from tests.integrations.family_helpers import fast_family
    from trdq import api
    from trdq.integrations.diffusers import fuse_qkv_projections
    from trdq.nn import static_attention
    from trdq.nn.flux_attention import fuse_flux_attention
    from trdq.testing.tiny import TINY_PROMPTS
    from trdq.testing.tiny_families import tiny_flux_pipeline

    monkeypatch.setattr(static_attention, "STATIC_MIN_TOKENS", 0)
    pipe = tiny_flux_pipeline(hidden=128).to("cuda", torch.bfloat16)
    assert fuse_qkv_projections(pipe.transformer) > 0
    api.quantize(pipe, fast_family("fp8-norot", calib_height=64, calib_width=64),
                 backend="cuda_fp8", progress=False, calibration_prompts=TINY_PROMPTS)
    call = {"height": 64, "width": 64, "max_sequence_length": 16, "num_inference_steps": 2,
            "guidance_scale": 3.5}
    assert api.calibrate_attention(pipe, TINY_PROMPTS[:2], call_kwargs=call) == 4

    def run():
        with torch.inference_mode():
            return pipe(["a red circle"], generator=torch.Generator().manual_seed(0),
                        output_type="latent", **call)[0].float()

    expected = run()
    assert fuse_flux_attention(pipe.transformer) == 4
    pipe.transformer.compile()
    assert P.sqnr_db(expected, run()) > 25


@pytest.mark.parametrize("compiled", [False, True])
def test_cross_attention_over_kept_keys_matches_its_oracle(compiled):
    """``fa3_cross_attention`` (seqused_k after moving the kept keys first) against the
    masked attention in float32, on a scattered mask and on none."""
    from trdq.kernels.cross_attention import fa3_cross_attention, prefix_attention_reference

    q, _, _ = _qkv(2, 1024, 4, 72, seed=3)
    _, k, v = _qkv(2, 120, 4, 72, seed=4)
    keep = torch.zeros(2, 120, dtype=torch.bool, device="cuda")
    keep[0, :17] = True
    keep[1, ::7] = True
    run = torch.compile(fa3_cross_attention) if compiled else fa3_cross_attention
    for mask in (keep, None):
        out = run(q, k, v, mask)
        ref = prefix_attention_reference(q.float(), k.float(), v.float(), mask)
        assert out.shape == q.shape and out.dtype == torch.bfloat16
        assert P.sqnr_db(ref, out.float()) > 40
    # the mask is read: attending over every key differs
    assert P.sqnr_db(prefix_attention_reference(q.float(), k.float(), v.float(), keep),
                     run(q, k, v, None).float()) < 20


def test_heads_padded_in_the_weights_attend_as_before():
    """``pad_attention_heads`` (72 -> 80 in the fused projection and ``to_out``): a bf16
    denoiser through FA3 e4m3 gives what it gave with the heads padded per call."""
    from trdq.integrations.diffusers import fuse_qkv_projections
    from trdq.nn.attention import set_attention_backend
    from trdq.nn.padded_heads import pad_attention_heads
    from trdq.testing.tiny import TEXT_DIM, tiny_pixart_transformer

    transformer = tiny_pixart_transformer(hidden=144).cuda().bfloat16()  # 2 heads x 72
    fuse_qkv_projections(transformer)
    set_attention_backend(transformer, "fp8")
    g = torch.Generator(device="cuda").manual_seed(0)
    inputs = {"hidden_states": torch.randn(2, 4, 8, 8, device="cuda", generator=g).bfloat16(),
              "encoder_hidden_states": torch.randn(2, 6, TEXT_DIM, device="cuda",
                                                   generator=g).bfloat16(),
              "timestep": torch.tensor([400, 400], device="cuda"),
              "added_cond_kwargs": {"resolution": None, "aspect_ratio": None}}
    with torch.inference_mode():
        before = transformer(**inputs, return_dict=False)[0].float()
        assert pad_attention_heads(transformer) == len(transformer.transformer_blocks)
        after = transformer(**inputs, return_dict=False)[0].float()
    assert P.sqnr_db(before, after) > 30
