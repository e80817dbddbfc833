"""The `trdq bench` harness on the tiny random PixArt (CPU, seconds): schema and table."""

from __future__ import annotations

import json

import pytest
import torch

from trdq.tools import bench


def _bench_cpu(out, rows: str, *extra: str) -> int:
    """`trdq bench` on the tiny preset, on CPU, writing ``out``; returns its exit code."""
    return bench.main(["--preset", "tiny-test", "--device", "cpu", "--json", str(out),
                       "--rows", rows, *extra])


def test_bench_bf16_row_quick(tmp_path):
    out = tmp_path / "b.json"
    rc = _bench_cpu(out, "bf16-eager", "--no-markdown", "--runs", "1", "--step-runs", "1",
                    "--warmup", "0")
    assert rc == 0
    doc = json.loads(out.read_text())
    assert [r["scope"] for r in doc["results"]] == ["pipeline", "denoiser_step"]


def test_bench_text_encoder_row_counts_only_the_quantized_encoder(tmp_path):
    out = tmp_path / "b.json"
    rc = _bench_cpu(out, "bf16-eager,bf16-eager+t5int8", "--no-markdown", "--runs", "1",
                    "--step-runs", "1", "--warmup", "0", "--scopes", "pipeline")
    assert rc == 0
    details = json.loads((tmp_path / "b.json.details.json").read_text())
    assert details["errors"] == {}
    report = details["rows"]["bf16-eager+t5int8"]["text_encoder"]
    assert report["replaced"] and report["bytes_after"] < report["bytes_before"]
    by = {r["name"]: r for r in json.loads(out.read_text())["results"]}
    # pipeline scope: the weight bytes are the whole pipeline's, encoder included
    assert by["bf16-eager+t5int8"]["weight_bytes"] < by["bf16-eager"]["weight_bytes"]


def test_bench_vae_tiling_row_tiles_only_that_row(tmp_path, monkeypatch):
    seen = {}
    run_row = bench._Runner.run_row

    def spy(self, row):
        original = self._prepare

        def prepare(name):
            info = original(name)
            seen[name] = bool(self.pipe.vae.use_tiling)
            return info

        self._prepare = prepare
        run_row(self, row)
        seen[row + " (after)"] = bool(self.pipe.vae.use_tiling)

    monkeypatch.setattr(bench._Runner, "run_row", spy)
    out = tmp_path / "b.json"
    rc = _bench_cpu(out, "bf16-eager+vaetile,bf16-eager", "--no-markdown", "--runs", "1",
                    "--warmup", "0", "--scopes", "pipeline")
    assert rc == 0
    assert seen == {
        "bf16-eager+vaetile": True,
        "bf16-eager+vaetile (after)": False,
        "bf16-eager": False,
        "bf16-eager (after)": False,
    }
    names = [r["name"] for r in json.loads(out.read_text())["results"]]
    assert names == ["bf16-eager+vaetile", "bf16-eager"]


@pytest.mark.slow
def test_bench_json_schema_and_markdown(tmp_path, monkeypatch):
    monkeypatch.setenv("TRDQ_GEMM_TMA", "0")  # a setting the section must name
    out = tmp_path / "b.json"
    md = tmp_path / "BENCHMARKS.md"
    rc = _bench_cpu(out, "fp32-eager,bf16-eager,w8a8-eager", "--markdown", str(md),
                    "--runs", "1", "--step-runs", "1", "--warmup", "0",
                    "--cache-dir", str(tmp_path / "cache"))
    assert rc == 0
    doc = json.loads(out.read_text())
    assert set(doc) == {"preset", "device", "torch", "results"}
    assert doc["preset"] == "tiny-test"
    names = {(r["name"], r["scope"]) for r in doc["results"]}
    for row in ("fp32-eager", "bf16-eager", "w8a8-eager"):
        assert (row, "pipeline") in names and (row, "denoiser_step") in names
    for r in doc["results"]:
        assert set(r) == {"name", "scope", "latency_s", "peak_memory_bytes", "weight_bytes"}
        assert r["latency_s"] > 0 and r["weight_bytes"] > 0
    by = {(r["name"], r["scope"]): r for r in doc["results"]}
    # int8 weights: the quantized denoiser holds fewer bytes than bf16
    assert (
        by[("w8a8-eager", "denoiser_step")]["weight_bytes"]
        < by[("bf16-eager", "denoiser_step")]["weight_bytes"]
    )
    details = json.loads((tmp_path / "b.json.details.json").read_text())
    assert details["errors"] == {}
    assert details["rows"]["w8a8-eager"]["quantize"]["backend"] == "cpu_int8"
    table = md.read_text()
    assert "tiny-test" in table and "| w8a8-eager | denoiser_step |" in table
    # a run with an fp32 row gets its ratio column (the CPU target's baseline)
    assert "| vs fp32-eager | vs bf16-eager |" in table
    assert "| fp32-eager | pipeline |" in table and "| 1.00x | " in table
    assert "max RSS" in table  # CPU peak memory is said to be a process high-water mark
    assert "settings: " in table and "TRDQ_GEMM_TMA=0" in table


def test_default_rows_cpu_and_cuda():
    import torch

    cpu = bench.default_rows(torch.device("cpu"), ["w8a8"], torchao=True, swap=False)
    assert cpu[0] == "fp32-eager" and "w8a8-compile" in cpu and "torchao-int8-compile" in cpu
    assert not any(r.endswith("+cg") for r in cpu)
    cuda = bench.default_rows(torch.device("cuda"), ["fp8"], torchao=True, swap=True)
    assert "fp32-eager" not in cuda and "fp8-compile+cg" in cuda
    assert "torchao-fp8row-compile" in cuda and "fp8swap-compile+cg" in cuda


def test_unknown_row_is_reported_not_fatal(tmp_path):
    out = tmp_path / "b.json"
    with pytest.raises(SystemExit):
        bench.main(["--preset", "tiny-test", "--compile", "nope"])
    rc = _bench_cpu(out, "bogus-eager", "--no-markdown", "--runs", "1",
                    "--cache-dir", str(tmp_path / "c"))
    assert rc == 1  # no results
    details = json.loads((tmp_path / "b.json.details.json").read_text())
    assert "bogus-eager" in details["errors"]


def test_denoiser_step_of_a_quantized_row_runs_as_a_cfg_batch(tmp_path, monkeypatch):
    """The step scope calls the denoiser without the pipeline: it must still tell the
    quantized layers that the batch is [uncond, cond] (per-half clips, CFG-delta)."""
    from trdq.nn import QuantLinear

    seen = []
    original = QuantLinear.forward

    def spy(self, x):
        seen.append(self.context.cfg_active)
        return original(self, x)

    monkeypatch.setattr(QuantLinear, "forward", spy)
    rc = _bench_cpu(tmp_path / "b.json", "w8a8-eager", "--no-markdown", "--runs", "1",
                    "--step-runs", "1", "--warmup", "0", "--scopes", "denoiser_step",
                    "--calib-prompts", "1")
    assert rc == 0 and seen and all(seen)


def test_bench_torchops_row_runs_cpu_int8_without_its_c_pass(tmp_path, monkeypatch):
    """`+torchops` times cpu_int8's torch-ops activation path beside the C pass, in one run."""
    from trdq.kernels import cpu_int8, cpu_native

    calls = {"native": 0, "torch": 0}
    native, torch_ops = cpu_int8.native_int8_linear, cpu_int8.cpu_int8_linear

    def count(key, fn):
        def wrapped(*args, **kwargs):
            calls[key] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(cpu_int8, "native_int8_linear", count("native", native))
    monkeypatch.setattr(cpu_int8, "cpu_int8_linear", count("torch", torch_ops))
    out = tmp_path / "b.json"
    rc = _bench_cpu(out, "w8a8-eager+torchops", "--no-markdown", "--runs", "1",
                    "--step-runs", "1", "--warmup", "0", "--scopes", "denoiser_step",
                    "--cache-dir", str(tmp_path / "cache"))
    assert rc == 0
    details = json.loads((tmp_path / "b.json.details.json").read_text())
    assert details["errors"] == {} and details["rows"]["w8a8-eager+torchops"]["cpu_native"] is False
    assert calls["torch"] > 0 and calls["native"] == 0
    assert cpu_native._enabled  # the next row gets the C pass back


def test_bench_multikernel_row_sets_inductors_switch_for_that_row_only(tmp_path, monkeypatch):
    """`+multikernel` compiles its row with triton.multi_kernel = 1 and puts the default
    back for the next row."""
    import torch._inductor.config as inductor_config

    seen = []
    original = bench._Runner._release

    def spy(self):  # the row has run: what it was compiled with, then the reset
        seen.append(inductor_config.triton.multi_kernel)
        original(self)
        seen.append(inductor_config.triton.multi_kernel)

    monkeypatch.setattr(bench._Runner, "_release", spy)
    out = tmp_path / "b.json"
    rc = _bench_cpu(out, "bf16-eager+multikernel,bf16-eager", "--no-markdown", "--runs", "1",
                    "--step-runs", "1", "--warmup", "0", "--scopes", "denoiser_step")
    assert rc == 0
    details = json.loads((tmp_path / "b.json.details.json").read_text())
    assert details["rows"]["bf16-eager+multikernel"]["inductor_multi_kernel"] == 1
    assert "inductor_multi_kernel" not in details["rows"]["bf16-eager"]
    assert seen == [1, 0, 0, 0]


def test_bench_fusednorm_row_fuses_the_quantized_blocks(tmp_path):
    """`+fusednorm` gives the quantized denoiser's blocks the fused feed-forward entry; a
    row whose blocks cannot take it (or FLUX's, `+fluxentry`) fails with the reason."""
    out = tmp_path / "b.json"
    rows = ("fp8-norot-eager+fusednorm,fp8-norot-eager+fusedff,bf16-eager+fusednorm,"
            "fp8-norot-eager+fluxentry,bf16-eager+padheads")
    rc = _bench_cpu(out, rows, "--no-markdown",
                    "--runs", "1", "--step-runs", "1", "--warmup", "0", "--scopes",
                    "denoiser_step", "--cache-dir", str(tmp_path / "cache"))
    assert rc == 0  # a failed row is reported in the details; the run goes on
    details = json.loads((tmp_path / "b.json.details.json").read_text())
    assert details["rows"]["fp8-norot-eager+fusednorm"]["fused_norm_blocks"] > 0
    assert details["rows"]["fp8-norot-eager+fusedff"]["fused_norm_blocks"] > 0
    assert "no block of this denoiser can be fused" in details["errors"]["bf16-eager+fusednorm"]
    # the tiny preset is PixArt-like: no FLUX double-stream block
    assert "no FLUX double-stream block" in details["errors"]["fp8-norot-eager+fluxentry"]
    # its heads are 32 wide, already a multiple of FA3's 16: nothing to pad
    assert "heads to pad" in details["errors"]["bf16-eager+padheads"]


@pytest.mark.parametrize("act_dtype", ["fp32", pytest.param("auto", marks=pytest.mark.slow)])
def test_bench_act_dtype_sets_the_quantized_rows_activations(tmp_path, monkeypatch, act_dtype):
    """TR-DQ rows run fp32 activations on CPU as the server does (the default, auto, or
    --act-dtype fp32); bf16/fp32 rows keep theirs."""
    seen = {}
    prepare = bench._Runner._prepare

    def spy(self, row):
        info = prepare(self, row)
        seen[row] = self.pipe.transformer.dtype
        return info

    monkeypatch.setattr(bench._Runner, "_prepare", spy)
    out = tmp_path / "b.json"
    rc = _bench_cpu(out, "bf16-eager,w8a8-eager", "--act-dtype", act_dtype, "--markdown",
                    str(tmp_path / "B.md"), "--runs", "1", "--step-runs", "1", "--warmup", "0",
                    "--scopes", "denoiser_step", "--cache-dir", str(tmp_path / "cache"))
    assert rc == 0
    import torch

    assert seen == {"bf16-eager": torch.bfloat16, "w8a8-eager": torch.float32}
    assert "fp32 activations" in (tmp_path / "B.md").read_text()


@pytest.mark.parametrize("calibration", ["full", "timing"])
def test_timing_calibration_keeps_the_recipe_but_its_search(tmp_path, monkeypatch, calibration):
    """`--calibration timing` quantizes the same layers with the same flags (the kernels
    the row times) and skips only the search, GPTQ and the weight clip; the notes say so."""
    import trdq.api

    configs = []
    quantize = trdq.api.quantize

    def spy(pipe, cfg, **kwargs):
        configs.append(cfg)
        return quantize(pipe, cfg, **kwargs)

    monkeypatch.setattr(trdq.api, "quantize", spy)
    out = tmp_path / "b.json"
    rc = _bench_cpu(out, "w8a8-eager", "--no-markdown", "--runs", "1", "--step-runs", "1",
                    "--warmup", "0", "--scopes", "denoiser_step", "--calibration", calibration,
                    "--cache-dir", str(tmp_path / "cache"))
    assert rc == 0
    (cfg,) = configs
    full = trdq.api.QuantConfig.preset("w8a8")
    timing = calibration == "timing"
    assert (cfg.search, cfg.weight_clip_search, cfg.weight_rounding) == (
        (False, False, "nearest") if timing
        else (full.search, full.weight_clip_search, full.weight_rounding))
    for same in ("weight_bits", "act_bits", "act_mode", "act_center", "rotation", "cfg_delta",
                 "num_groups", "smoothing"):
        assert getattr(cfg, same) == getattr(full, same), same
    notes = json.loads((tmp_path / "b.json.details.json").read_text())["notes"]
    assert any("calibration=timing" in note for note in notes) == timing


@pytest.mark.parametrize("kernel,category", [
    ("nvjet_sm90_qqtst_128x128_128x6_1x2_h_bz_ovscale_bias_TNT", "gemm"),
    ("_lowbit_gemm_kernel", "lowbit_gemm"),
    ("_rotate_quant_rows_kernel", "rotate_quant"),
    ("void cutlass::device_kernel<flash::enable_sm90_or_later<flash::FlashAttnFwdSm90", "attention"),
    # inductor's fused kernels name the ops they feed; they are elementwise work
    ("triton_poi_fused__scaled_mm__to_copy_clamp_div_gelu_view_5", "elementwise/other"),
    ("triton_red_fused__fused_rms_norm__scaled_dot_product_cudnn_attention_4",
     "elementwise/other"),
])
def test_profile_categories_by_kernel_name(kernel, category):
    from trdq.tools.bench_variants import kernel_category

    assert kernel_category(kernel) == category


def test_text_encoder_profile_replays_the_inputs_a_pipeline_call_gave_it():
    from trdq.tools.bench_variants import profile_text_encoder

    class Pipe:
        def __init__(self):
            self.text_encoder = torch.nn.Linear(4, 4)
            self.calls = 0

        def __call__(self):
            self.calls += 1
            return self.text_encoder(torch.ones(2, 4))

    pipe = Pipe()
    seen = []
    pipe.text_encoder.register_forward_hook(lambda _m, args, _out: seen.append(args[0].shape))
    report = profile_text_encoder(pipe, pipe, runs=3)
    assert pipe.calls == 1  # one pipeline call, to record the encoder's inputs
    assert seen == [(2, 4)] * 5  # that call, a warm-up, three timed runs (no GPU to profile)
    assert report["wall_ms"] > 0 and report["gpu_ms"] == 0.0  # no GPU here
    assert profile_text_encoder(type("NoEncoder", (), {})(), pipe) is None
