"""CUDA graph captures off the first GPU and from worker threads (skipped without GPUs).

The server runs one engine worker thread per GPU (``TRDQ_DEVICES``). ``torch.cuda.graph``
alone captures on one stream made on whichever GPU captured first, so on two H100s every
capture on the second GPU failed, and so did Triton's own autotuning timer (which captures
the same way). ``capture_graph`` captures on a stream of the GPU asked for.
"""

from __future__ import annotations

import importlib.util
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from trdq.kernels.launch import capture_graph

HAS_TRITON = importlib.util.find_spec("triton") is not None
pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON),
                       reason="needs a CUDA device and triton"),
]


def _in_threads(*fns) -> None:
    """Runs each of ``fns`` in its own thread at once (as the engine's per-GPU workers do);
    the first error is raised here."""
    with ThreadPoolExecutor(max_workers=len(fns)) as pool:
        for future in [pool.submit(fn) for fn in fns]:
            future.result(timeout=300)


def _capture_and_replay(device: torch.device) -> None:
    with torch.cuda.device(device):
        x = torch.arange(8, device=device, dtype=torch.float32)
        y = torch.empty_like(x)
        graph = torch.cuda.CUDAGraph()
        with capture_graph(graph, device):
            y.copy_(x * 2)
        x.fill_(3.0)
        graph.replay()
        torch.cuda.synchronize(device)
        assert torch.equal(y.cpu(), torch.full((8,), 6.0))


def _rotate_quant_matches_reference(device: torch.device, m: int) -> None:
    """An autotuned kernel's first launch on ``device``: it tunes, i.e. captures there."""
    from trdq.kernels.triton_rotate_quant import rotate_quant_reference, rotate_quant_triton

    with torch.cuda.device(device):
        g = torch.Generator(device=device).manual_seed(m)
        x = torch.randn(m, 1152, device=device, generator=g).to(torch.bfloat16)
        kw = {"rotation_block": 128, "clip_ratio": 0.9, "out_dtype": torch.int8}
        q, s = rotate_quant_triton(x, **kw)
        q_ref, s_ref = rotate_quant_reference(x, **kw)
        torch.testing.assert_close(s, s_ref, rtol=1e-5, atol=0)
        assert (q.int() - q_ref.int()).abs().max() <= 1


def test_a_capture_replays_from_a_worker_thread():
    _in_threads(lambda: _capture_and_replay(torch.device("cuda", 0)))


def test_a_failed_capture_gives_the_thread_its_stream_back():
    device = torch.device("cuda", 0)
    with torch.cuda.device(device):
        before = torch.cuda.current_stream()
        with pytest.raises(RuntimeError), capture_graph(torch.cuda.CUDAGraph(), device):
            torch.cuda.synchronize()  # not permitted while capturing
        assert torch.cuda.current_stream() == before
        assert torch.cuda.current_device() == 0
        # the default generator left capture mode: eager random draws work
        torch.randn(4, device=device)
        _capture_and_replay(device)  # the thread captures and runs normally afterwards


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_captures_and_tuning_on_the_second_gpu_from_worker_threads():
    # torch.cuda.graph's process-wide stream, made on the first GPU, as a plain capture (or
    # Triton's do_bench_cudagraph) leaves it
    x0 = torch.ones(4, device="cuda:0")
    with torch.cuda.device(0), torch.cuda.graph(torch.cuda.CUDAGraph()):
        x0.mul_(2)
    first, second = torch.device("cuda", 0), torch.device("cuda", 1)
    _in_threads(lambda: _capture_and_replay(second))
    _in_threads(lambda: _rotate_quant_matches_reference(second, m=331))  # a new shape: tunes
    # both GPUs' workers at once, each capturing and tuning
    barrier = threading.Barrier(2, timeout=120)

    def worker(device, m):
        def run():
            barrier.wait()
            _capture_and_replay(device)
            _rotate_quant_matches_reference(device, m)
        return run

    _in_threads(worker(first, 401), worker(second, 402))


def test_a_text_encoder_replayed_from_graphs_matches_eager_calls():
    """``graph_text_encoders`` on a small random T5 (compiled layers, as served): the
    replayed encode equals the eager one for new prompts, and the ``ModelOutput`` is kept."""
    from types import SimpleNamespace

    from transformers import T5Config, T5EncoderModel

    from trdq.runtime.compile import compile_text_encoders, uncompile_text_encoders
    from trdq.runtime.cuda_graphs import graph_text_encoders, ungraph_text_encoders

    torch.manual_seed(0)
    config = T5Config(vocab_size=100, d_model=64, d_kv=16, d_ff=128, num_layers=3,
                      num_heads=4)
    encoder = T5EncoderModel(config).cuda().eval()
    pipe = SimpleNamespace(text_encoder=encoder)
    prompts = [torch.randint(0, 100, (1, 12), device="cuda") for _ in range(4)]
    masks = [torch.ones(1, 12, dtype=torch.long, device="cuda") for _ in range(4)]
    masks[3][:, 7:] = 0
    with torch.inference_mode():
        eager = [encoder(ids, attention_mask=mask)[0] for ids, mask in zip(prompts, masks)]
        compile_text_encoders(pipe)
        assert graph_text_encoders(pipe) == 1
        assert graph_text_encoders(pipe) == 0  # already replayed: left as it is
        replayed = [encoder(ids, attention_mask=mask) for ids, mask in zip(prompts, masks)]
    assert len(encoder.forward.graphs) == 1
    assert type(replayed[0]).__name__ == "BaseModelOutputWithPastAndCrossAttentions"
    for want, got in zip(eager, replayed):
        torch.testing.assert_close(got.last_hidden_state, want, rtol=2e-3, atol=2e-3)
    ungraph_text_encoders(pipe)
    uncompile_text_encoders(pipe)
    assert "forward" not in encoder.__dict__


def test_a_causal_clip_encoder_called_without_a_mask_is_captured():
    """FLUX's CLIP call (no attention mask, a causal encoder): eagerly transformers gives
    its compiled layers no mask, while capturing a mask tensor (the H100 failure of
    2026-12-08). The rehearsal compiles that path first; the replay equals eager calls."""
    from types import SimpleNamespace

    from transformers import CLIPTextConfig, CLIPTextModel

    from trdq.runtime.compile import compile_text_encoders, uncompile_text_encoders
    from trdq.runtime.cuda_graphs import graph_text_encoders, ungraph_text_encoders

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=100, hidden_size=64, intermediate_size=128,
                            num_hidden_layers=2, num_attention_heads=4,
                            max_position_embeddings=16)
    encoder = CLIPTextModel(config).cuda().eval()
    pipe = SimpleNamespace(text_encoder=encoder)
    prompts = [torch.randint(0, 100, (1, 16), device="cuda") for _ in range(3)]
    with torch.inference_mode():
        eager = [encoder(ids, output_hidden_states=False).last_hidden_state for ids in prompts]
        compile_text_encoders(pipe)
        assert graph_text_encoders(pipe) == 1
        replayed = [encoder(ids, output_hidden_states=False) for ids in prompts]
    assert len(encoder.forward.graphs) == 1
    for want, got in zip(eager, replayed):
        torch.testing.assert_close(got.last_hidden_state, want, rtol=2e-3, atol=2e-3)
    ungraph_text_encoders(pipe)
    uncompile_text_encoders(pipe)
