"""The runtime: what the server needs at serving time besides ``trdq.quantize``.

- ``trdq.runtime.compile``: ``compile_denoiser``, the in-place ``torch.compile`` of the
  denoiser (block by block, or the whole module), and ``compile_vae_decoder`` (channels-last,
  compiled), behind TRDQ_COMPILE;
- ``trdq.runtime.cuda_graphs``: ``CudaGraphForward``, the denoiser's forward replayed from
  CUDA graphs, behind TRDQ_CUDA_GRAPHS;
- ``trdq.runtime.profiling``: ``PipelineProfiler``, per-stage and per-step wall times (the
  server's stage metrics);
- ``trdq.runtime.host_memory``: ``configure_host_malloc``, glibc's malloc kept from unmapping
  the CPU path's large activations (TRDQ_HOST_MALLOC).

The tools (``trdq bench``, ``trdq eval``, ``trdq loadtest``, ``trdq loadsuite``, zoo
training) live in ``trdq.tools`` and use these too; nothing here imports them.
"""
