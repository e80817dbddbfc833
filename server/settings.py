"""Server settings, read from the environment (prefix TRDQ_), validated at start-up.

`create_app` refuses to start on a bad value, and the error names the setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DISABLED = {"", "none", "off", "false", "0", "disabled"}
#: the words a yes/no switch accepts (any case, surrounding spaces ignored)
TRUE_WORDS = {"1", "true", "yes", "on"}
FALSE_WORDS = {"0", "false", "no", "off"}
# TRDQ_DTYPE: accepted spellings -> the name stored (a torch dtype name, or auto).
DTYPE_ALIASES = {
    "auto": "auto", "float32": "float32", "fp32": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRDQ_", extra="ignore")

    # Models: a zoo name or a local diffusers folder; "none" disables the endpoint.
    model: str = "tiny-shapes-t2i"
    video_model: str = "tiny-shapes-t2v"
    # One precision or a comma list; the first is the default for requests.
    quant: str = "w8a8"
    cache_dir: Path = Path("~/.cache/trdq")
    calibration_prompts: Path | None = None
    recalibrate: bool = True
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # Several devices (comma list, e.g. cuda:0,cuda:1): one engine worker per device, each
    # with its own copy of the models, all taking work from one shared queue. Empty: `device`.
    devices: str = ""
    # Where each device's worker runs: thread (a thread of the server process), process (its
    # own spawned process: own interpreter lock, CUDA context and graphs; the server process
    # keeps the queue, batching, jobs and metrics), or auto: process when TRDQ_DEVICES names
    # more than one device, else thread (one device gains nothing from a process of its own
    # and would pay a second interpreter's start-up and memory).
    worker_mode: Literal["auto", "thread", "process"] = "auto"
    backend: str = "auto"
    # Weight-only quantization of the text encoder (T5): none | int8 | int4.
    text_encoder_quant: str = "none"
    # Dtype the pipelines are loaded and served in: auto (bf16 on CUDA, fp32 on CPU),
    # float32 or bfloat16 (aliases fp32, bf16).
    dtype: str = "auto"
    compile: bool = False
    # Replay each denoiser forward from a CUDA graph (one per timestep group and input
    # shapes, at most cuda_graphs_max of them per model; more run eagerly). auto: on every
    # CUDA worker, off on CPU (vLLM's default too: without graphs a quantized step is bound
    # by the host launching its small kernels); true: CUDA only, refused on CPU.
    cuda_graphs: Literal["auto"] | bool = "auto"
    cuda_graphs_max: int = Field(default=64, ge=1)
    # One to_qkv projection (one activation quantization, one GEMM) instead of to_q, to_k and
    # to_v in every denoiser that diffusers can fuse, for every precision served (fp too).
    # auto: on CUDA devices (what `trdq bench` measures), off on CPU, where the zoo's shipped
    # calibrations are of the unfused layers (fused, a model calibrates once at start-up).
    fuse_qkv: Literal["auto"] | bool = "auto"
    # The quantized blocks' LayerNorm + adaLN modulate + quantizer (and the feed-forward's
    # GELU + quantizer) as one Triton kernel each (trdq/nn/fused_block.py), where a block
    # allows it (PixArt/Latte blocks quantized with static e4m3 scales, fp8-norot). auto: on
    # CUDA; on the CPU the same forward runs its reference path (correct, not faster).
    fused_block: Literal["auto"] | bool = "auto"
    # Self-attention kernel of the quantized denoisers (the fp precision keeps SDPA): sdpa
    # (PyTorch's, cuDNN on Hopper), fa3 (FlashAttention-3 bf16), fp8 (FA3 e4m3 with K/V
    # smoothing), fp8-long (fp8 on self-attention over >= 2048 tokens, sdpa on shorter ones),
    # fp8-static (fp8 with Q/K/V statistics recorded per timestep group at start-up over the
    # calibration prompts: no statistics pass per call, trdq/nn/static_attention.py);
    # the FA3 ones need a Hopper GPU and the fa3-fwd package. auto: sdpa until FP8 attention
    # passes its whole quality gate (trdq/nn/attention.py AUTO_ON_HOPPER, docs/KERNELS.md).
    attention: Literal["auto", "sdpa", "fa3", "fp8", "fp8-long", "fp8-static"] = "auto"
    threads: int = Field(default=0, ge=0)  # torch intra-op threads on CPU; 0 = torch default
    warmup: bool = True
    # What the warm-up runs before /readyz turns 200, per served variant and worker: every
    # batch size listed (comma list: the pipeline batches that load will bring, e.g.
    # 1,2,3,4 with TRDQ_MAX_BATCH=4), at WxH (empty: the model's default size), with this
    # many sampler steps (the requests' step count reaches every timestep group). Under
    # CUDA graphs each shape runs twice (eager, then capture), so the first requests
    # replay instead of capturing while other work waits.
    warmup_batch_sizes: str = "1"
    warmup_size: str = ""
    warmup_steps: int = Field(default=2, ge=1)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    api_key: SecretStr | None = None
    # Probes (/healthz, /readyz) and /metrics stay open unless these ask for the key too.
    auth_probes: bool = False
    auth_metrics: bool = False
    # CORS is off unless origins are listed (comma list, or "*").
    cors_origins: str = ""
    log_level: str = "info"

    max_queue: int = Field(default=16, ge=1)
    max_batch: int = Field(default=4, ge=1, le=64)
    batch_window_ms: float = Field(default=5.0, ge=0.0)
    request_timeout_s: float = Field(default=300.0, gt=0.0)
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    # Async jobs (/jobs): time limit per job, and how long / how many results are kept.
    job_timeout_s: float = Field(default=3600.0, gt=0.0)
    job_ttl_s: float = Field(default=600.0, gt=0.0)
    max_jobs: int = Field(default=256, ge=1)
    # SIGTERM: stop admissions, finish accepted work for up to this long, then exit.
    shutdown_grace_s: float = Field(default=30.0, ge=0.0)

    # Request limits (also published in the OpenAPI schema).
    max_pixels: int = Field(default=1024 * 1024, ge=64)
    max_frames: int = Field(default=16, ge=1)
    max_steps: int = Field(default=100, ge=1)
    max_prompt_chars: int = Field(default=1000, ge=1)

    # ---- kernel switches ---------------------------------------------------------------
    # Process-wide choices between kernels that compute the same result, applied once at
    # start-up before any model is built (trdq.kernels.switches.configure; shown in /info
    # under "kernels"). Without the server, the library reads the same variables itself.
    # cpu_int8's activation pass in C (built with gcc on first use; none: torch ops).
    cpu_native: bool = True
    # cpu_int8's integer GEMM: auto (torch._int_mm only on AVX-512 VNNI / AMX CPUs, where
    # oneDNN runs it; elsewhere an fp32 GEMM of the same integers), true, false.
    cpu_int_mm: bool | None = None
    # oneDNN's int8 linear on a prepacked weight copy (VNNI / AMX CPUs), elsewhere its u8
    # kernel for 7-bit activations; false: torch._int_mm / the fp32 GEMM of the integers.
    cpu_prepack: bool = True
    # cuda_w4a8's W8A8 GEMM loads tiles through TMA descriptors: graphs (only in launches
    # recorded into CUDA graphs), 1 (always), 0 (never).
    gemm_tma: Literal["graphs", "1", "0"] = "graphs"
    # Where the C pass is built; unset: $TRDQ_CACHE_DIR/native, else ~/.cache/trdq/native.
    native_cache: Path | None = None
    # Host memory (glibc): reuse keeps freed blocks for the next tensor (the CPU path's
    # activations are tens of MB; unmapping them cost the zoo video pipeline 1.5-3.0x);
    # system leaves malloc's defaults (trdq/runtime/host_memory.py).
    host_malloc: Literal["reuse", "system"] = "reuse"

    @field_validator("cpu_int_mm", mode="before")
    @classmethod
    def _parse_cpu_int_mm(cls, value):
        if not isinstance(value, str):
            return value
        word = value.strip().lower()
        if word in ("", "auto"):
            return None
        if word in TRUE_WORDS | FALSE_WORDS:
            return word in TRUE_WORDS
        raise ValueError("must be auto (by CPU), true (1) or false (0)")

    @field_validator("gemm_tma", mode="before")
    @classmethod
    def _parse_gemm_tma(cls, value):
        if not isinstance(value, str):
            return value
        word = value.strip().lower() or "graphs"
        word = {"true": "1", "on": "1", "false": "0", "off": "0"}.get(word, word)
        if word not in ("graphs", "1", "0"):
            raise ValueError("must be graphs, 1 (always) or 0 (never)")
        return word
    # ---- end of kernel switches --------------------------------------------------------

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit()):
            return value
        raise ValueError("must be auto, cpu, cuda or cuda:N")

    @field_validator("cuda_graphs", "fuse_qkv", "fused_block", mode="before")
    @classmethod
    def _parse_auto_or_flag(cls, value):
        if not isinstance(value, str):
            return value
        word = value.strip().lower()
        if word == "auto":
            return word
        if word in TRUE_WORDS:
            return True
        if word in DISABLED | FALSE_WORDS:
            return False
        raise ValueError("must be auto, true (1) or false (0)")

    @field_validator("cuda_graphs")
    @classmethod
    def _check_cuda_graphs(cls, value: str | bool, info: ValidationInfo) -> str | bool:
        names = (info.data.get("devices") or info.data.get("device") or "").split(",")
        if value is True and "cpu" in names:
            raise ValueError("CUDA graphs need a CUDA device; TRDQ_DEVICE(S) names cpu")
        return value

    @field_validator("text_encoder_quant")
    @classmethod
    def _check_text_encoder_quant(cls, value: str) -> str:
        from trdq.text_encoder import TEXT_ENCODER_QUANTS

        value = value.strip().lower()
        if value not in TEXT_ENCODER_QUANTS:
            raise ValueError(f"must be one of {', '.join(TEXT_ENCODER_QUANTS)}")
        return value

    @field_validator("dtype")
    @classmethod
    def _check_dtype(cls, value: str) -> str:
        name = DTYPE_ALIASES.get(value.strip().lower())
        if name is None:
            raise ValueError("must be auto, float32 (fp32) or bfloat16 (bf16)")
        return name

    @field_validator("warmup_batch_sizes")
    @classmethod
    def _check_warmup_batch_sizes(cls, value: str) -> str:
        words = [word.strip() for word in value.split(",") if word.strip()]
        if not words or not all(word.isdigit() and int(word) >= 1 for word in words):
            raise ValueError("must be a comma list of batch sizes >= 1, e.g. 1,2,4")
        return ",".join(words)

    @field_validator("warmup_size")
    @classmethod
    def _check_warmup_size(cls, value: str) -> str:
        value = value.strip().lower()
        width, _, height = value.partition("x")
        if value and not (width.isdigit() and height.isdigit() and int(width) and int(height)):
            raise ValueError("must be WIDTHxHEIGHT, e.g. 1024x1024, or empty (model default)")
        return value

    @field_validator("worker_mode", mode="before")
    @classmethod
    def _parse_worker_mode(cls, value):
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("devices")
    @classmethod
    def _check_devices(cls, value: str) -> str:
        names = [cls._check_device(name) for name in value.split(",") if name.strip()]
        if "auto" in names and len(names) > 1:
            raise ValueError("auto cannot be combined with other devices")
        return ",".join(names)

    @field_validator("quant")
    @classmethod
    def _check_quant(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        if not names:
            raise ValueError("name at least one precision, e.g. w8a8 or fp")
        if len(set(names)) != len(names):
            raise ValueError("a precision is listed twice")
        return ",".join(names)

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def device_names(self) -> list[str]:
        """One entry per engine worker (TRDQ_DEVICES, else TRDQ_DEVICE)."""
        return self.devices.split(",") if self.devices else [self.device]

    @property
    def resolved_worker_mode(self) -> Literal["thread", "process"]:
        if self.worker_mode == "auto":
            return "process" if len(self.device_names) > 1 else "thread"
        return self.worker_mode

    @property
    def warmup_batch_size_list(self) -> list[int]:
        return [int(word) for word in self.warmup_batch_sizes.split(",")]

    @property
    def warmup_width_height(self) -> tuple[int, int] | None:
        if not self.warmup_size:
            return None
        width, _, height = self.warmup_size.partition("x")
        return int(width), int(height)

    @property
    def quant_names(self) -> list[str]:
        return self.quant.split(",")

    @property
    def image_model(self) -> str | None:
        return None if self.model.strip().lower() in DISABLED else self.model

    @property
    def video_model_name(self) -> str | None:
        return None if self.video_model.strip().lower() in DISABLED else self.video_model
