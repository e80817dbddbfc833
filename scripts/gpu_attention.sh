#!/usr/bin/env bash
# On a Hopper GPU (the device tool): FA3 attention's GPU tests, the attention microbench
# (SDPA against FA3 bf16 / FP8 at the DiTs' shapes) and `trdq bench` step rows with each
# attention backend. Wheels missing there (diffusers; fa3-fwd unpacked as fa3.tar.xz) are
# expected under .whl/.
# STAGES picks what runs (default: tests,micro,step; also eval); results land in $OUT.
# PRESET may name several bench presets, comma-separated: one `trdq bench` run each, in order.
# QUANT: the eval stage's settings (default w8a8,w8a8+fp8attn,fp8-norot+fp8attn).
# STAGES=probe runs scripts/fused_quant_probe.py (the fused e4m3 quantizer's cost),
# STAGES=qkvprobe scripts/qkv_fp8_out_probe.py (e4m3 written by the Q/K/V GEMM).
# Logs end up in $OUT/logs.txt (the device tool returns at most 8 files).
# BENCH_ARGS goes to `trdq bench` as it is (e.g. "--batches 1 --runs 2"); TESTS_TIMEOUT
# (seconds, default 600) bounds the GPU tests so the bench after them still runs.
set -u
# shellcheck source=scripts/device_env.sh
. "$(dirname "$0")/device_env.sh"
STAGES=${STAGES:-tests,micro,step}
PRESET=${PRESET:-pixart-alpha-1024}
ROWS=${ROWS:-bf16-compile+cg,bf16-compile+cg+fa3attn,w8a8-compile+cg,w8a8-compile+cg+fp8attn}
case ",$STAGES," in *,tests,*)
  timeout "${TESTS_TIMEOUT:-600}" python3 -m pytest -q -p no:cacheprovider -m gpu -o addopts="" \
    ${GPU_TESTS:-tests/kernels/test_fa3_attention_gpu.py} 2>&1 | tee "$OUT/gpu_tests.log" | tail -15
esac
case ",$STAGES," in *,step,*)
  for preset in ${PRESET//,/ }; do
    python3 -m trdq.cli bench --preset "$preset" --rows "$ROWS" --scopes "${SCOPES:-denoiser_step}" \
      ${PROFILE:+--profile} ${BENCH_ARGS:-} --json "$OUT/$preset${TAG:-}.json" \
      2>&1 | tee "$OUT/bench-$preset${TAG:-}.log" | grep -E "^\[bench\]|Error|error" | tail -40
  done
esac
case ",$STAGES," in *,micro,*)
  python3 -m trdq.kernels.microbench --attention-only --json "$OUT/attention-micro.json" \
    2>&1 | tee "$OUT/micro.log" | grep -v "^  variant" | tail -80
esac
case ",$STAGES," in *,probe,*)
  timeout "${PROBE_TIMEOUT:-300}" python3 scripts/fused_quant_probe.py 2>&1 | tee "$OUT/probe.log" | tail -20
esac
case ",$STAGES," in *,qkvprobe,*)  # can the Q/K/V GEMM write e4m3 (scripts/qkv_fp8_out_probe.py)
  timeout "${PROBE_TIMEOUT:-300}" python3 scripts/qkv_fp8_out_probe.py 2>&1 | tee "$OUT/qkvprobe.log" | tail -20
esac
case ",$STAGES," in *,eval,*)  # the zoo models' quality with FP8 attention, to FP
  for model in tiny-shapes-t2i tiny-shapes-t2v; do
    python3 -m trdq.cli eval --model "$model" --quant "${QUANT:-w8a8,w8a8+fp8attn,fp8-norot+fp8attn}" --device cuda \
      --prompts "${PROMPTS:-64}" --batch 16 --quiet --cache-dir /tmp/trdq-eval \
      --json "$OUT/eval-fp8attn-$model.json" --out-md "$OUT/quality-fp8attn.md" 2>&1 | tail -3
  done
esac
# The device tool returns at most 8 files: every log of this run goes into one logs.txt.
for log in "$OUT"/*.log; do
  [ -f "$log" ] || continue
  { echo "===== $(basename "$log")"; cat "$log"; } >> "$OUT/logs.txt" && rm -f "$log"
done
