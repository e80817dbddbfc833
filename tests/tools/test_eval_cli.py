"""`trdq eval`: setting expansion, the Markdown section bookkeeping, and tiny end-to-end runs."""

from __future__ import annotations

import json

import pytest

from trdq.config import PRESETS, QuantConfig
from trdq.eval.report import QualityReport, QualityResult
from trdq.tools import eval_cli as cli

KEYS = {"quant", "accuracy", "per_attribute", "psnr_to_fp", "ssim_to_fp", "seconds",
        "accuracy_by_kind"}


def test_ablation_chain_and_settings_order():
    assert cli.ablation_chain("w8a8") == [
        "w8a8-minmax",
        "w8a8-rot",
        "w8a8-rot-search",
        "w8a8-rot-groups-search",
        "w8a8",
        "faithful-1range",
        "faithful",
    ]
    assert cli.ablation_chain("w4a8")[-2:] == ["faithful-w4a8-1range", "faithful-w4a8"]
    assert cli.expand_settings("w8a8,fp,w8a8", []) == ["fp", "w8a8"]
    settings = cli.expand_settings("fp8", ["w8a8,w4a8"])
    assert settings[:2] == ["fp", "fp8"] and len(settings) == 2 + 14
    assert settings.index("w8a8-minmax") < settings.index("w8a8") < settings.index("faithful")
    for name in settings:
        QuantConfig.preset(name)  # every expanded name is a real preset
    shuffled = ["fp", "w8a8", "w4a8", "fp8", "w4a8-minmax", "faithful", "w8a8-minmax"]
    assert cli.canonical_order(shuffled) == [
        "fp",
        "w8a8-minmax",
        "w8a8",
        "faithful",
        "w4a8-minmax",
        "w4a8",
        "fp8",
    ]
    assert cli.ablation_chain("w6a6")[-1] == "faithful-w6a6"
    assert cli.expand_settings(None, ["w4a4"])[1:] == cli.ablation_chain("w4a4")
    with pytest.raises(ValueError, match="w2a2"):
        cli.expand_settings("w2a2", [])
    with pytest.raises(ValueError, match="--ablation"):
        cli.ablation_chain("fp8")


def test_unknown_preset_exits_2(capsys):
    assert cli.main(["--quant", "nope", "--out-md", "none"]) == 2
    assert "unknown quant preset" in capsys.readouterr().err


def _report(model: str, accuracy: float) -> QualityReport:
    report = QualityReport(model=model, prompts=4)
    report.results.append(QualityResult("fp", accuracy, {"color": accuracy}, None, None, 1.0))
    report.results.append(QualityResult("w8a8", accuracy, {"color": accuracy}, 41.0, 0.99, 0.5))
    return report


def test_markdown_sections_are_replaced_per_model(tmp_path):
    path = tmp_path / "QUALITY.md"
    first = cli.model_section(
        _report("m-image", 0.5),
        "trdq eval --model m-image",
        "CPU x",
        ["a note"],
        date="2026-11-26 12:00 UTC",
    )
    cli.update_markdown(path, first, "m-image")
    cli.update_markdown(
        path, cli.model_section(_report("m-video", 0.25), "cmd v", "CPU x", []), "m-video"
    )
    again = cli.model_section(
        _report("m-image", 0.75),
        "trdq eval --model m-image --prompts 4",
        "CPU y",
        [],
        date="2026-11-27 12:00 UTC",
    )
    cli.update_markdown(path, again, "m-image")
    text = path.read_text()
    assert text.startswith("# Quality of quantized generation")
    assert text.count("<!-- trdq-eval m-image -->") == 1 and "m-video" in text
    assert "0.750" in text and "0.500" not in text and "2026-11-27" in text
    assert "--prompts 4" in text and "on CPU y" in text and "| w8a8 |" in text
    assert text.index("2026-11-27") < text.index("<!-- trdq-eval m-video")  # replaced in place


def test_target_notes():
    report = _report("m", 0.98)
    report.results.append(QualityResult("w4a8", 0.80, {}, 25.0, 0.9, 0.5))
    report.results.append(QualityResult("w4a8-minmax", 0.70, {}, 20.0, 0.8, 0.5))
    notes = cli.target_notes(report, "image")
    assert "-> met" in notes[0] and "-> met" in notes[1]  # fp >= 97 %, w8a8 equal at 41 dB
    assert "NOT met" in notes[2] and "-18.0 points" in notes[2]
    assert "NOT met" in cli.target_notes(_report("m", 0.95), "image")[0]


def test_caption_kind_columns_only_when_the_prompts_mix_kinds():
    mixed = _report("m", 0.75)
    for row in mixed.results:
        row.accuracy_by_kind = {"full": 1.0, "partial": 0.25}
    text = cli.model_section(mixed, "cmd", "CPU x", [])
    assert "| full captions | partial captions |" in text and "| 1.000 | 0.250 |" in text
    assert '"accuracy_by_kind": {' in mixed.to_json().replace("\n", "")
    assert "| partial captions |" not in cli.model_section(_report("m", 0.75), "cmd", "CPU x", [])


def test_partial_fraction_is_checked(capsys):
    assert cli.main(["--partial", "2", "--out-md", "none"]) == 2
    assert "--partial" in capsys.readouterr().err


def _fast_preset_builder(name: str):
    base = PRESETS[name]
    # the CLI's plumbing is under test here, not the search: keep calibration tiny
    return lambda: base().replace(
        calib_num_prompts=2, calib_batch_size=2, calib_steps=2, calib_rows=64, search=False
    )


@pytest.mark.slow  # ~45 s; the CLI end to end stays in the default tier with video
def test_image_end_to_end(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "w8a8", _fast_preset_builder("w8a8"))
    out_json, out_md = tmp_path / "q.json", tmp_path / "QUALITY.md"
    argv = [
        "--model",
        "tiny-shapes-t2i",
        "--quant",
        "w8a8",
        "--prompts",
        "3",
        "--steps",
        "2",
        "--batch",
        "2",
        "--quiet",
    ]
    argv += ["--json", str(out_json), "--out-md", str(out_md), "--cache-dir", str(tmp_path)]
    argv += ["--calib-prompts", "1"]
    assert cli.main(argv) == 0
    payload = json.loads(out_json.read_text())
    assert payload["model"] == "tiny-shapes-t2i" and payload["prompts"] == 3
    assert [r["quant"] for r in payload["results"]] == ["fp", "w8a8"]
    fp, w8a8 = payload["results"]
    assert all(set(r) == KEYS for r in payload["results"])
    assert set(fp["per_attribute"]) == {"color", "shape", "size", "position", "background"}
    assert fp["psnr_to_fp"] is None and w8a8["psnr_to_fp"] > 10 and 0 < w8a8["ssim_to_fp"] <= 1
    assert fp["seconds"] > 0 and w8a8["seconds"] > 0
    text = out_md.read_text()
    assert "trdq eval --model tiny-shapes-t2i --quant w8a8 --prompts 3" in text
    assert "| w8a8 |" in text and "Target FP accuracy" in text and "cpu_int8" in text
    assert "Calibration on 1 prompts" in text and "Not run yet" not in text


def test_video_end_to_end(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # without --out-md no Markdown is written, docs/ included
    out_json = tmp_path / "v.json"
    argv = [
        "--model",
        "tiny-shapes-t2v",
        "--quant",
        "fp",
        "--prompts",
        "2",
        "--steps",
        "2",
        "--frames",
        "4",
        "--quiet",
    ]
    argv += ["--json", str(out_json)]
    assert cli.main(argv) == 0
    payload = json.loads(out_json.read_text())
    assert [r["quant"] for r in payload["results"]] == ["fp"]
    assert "direction" in payload["results"][0]["per_attribute"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.json"]


def test_train_split_writes_json_but_no_markdown(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative docs/ would appear here: nothing may
    out_json = tmp_path / "nested" / "dir" / "t.json"
    argv = ["--model", "tiny-shapes-t2i", "--quant", "fp", "--split", "train", "--prompts", "2"]
    argv += ["--steps", "2", "--quiet", "--json", str(out_json)]
    assert cli.main(argv) == 0
    assert json.loads(out_json.read_text())["prompts"] == 2
    assert not (tmp_path / "docs").exists()



def test_a_cpu_is_described_with_its_instruction_set():
    from trdq.machine import cpu_isa

    text = cli.device_description("cpu")
    assert text.startswith("CPU ") and f"({cpu_isa()})" in text and "threads" in text
