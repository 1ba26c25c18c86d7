"""mixed_precision: auto follows the hardware (bf16 only where the CPU computes
it natively), an explicit bf16 without native support warns once, and the
sidecar and the cost table say what each job ran in and on which CPU."""
import json
import logging
import os
import subprocess
import sys

import pytest
import torch

import tibalance.precision as P
from tibalance.util import Sidecar, TibalanceError

# every stage that has the setting: its key and the values its schema allows
STAGES = {
    "classifier.mixed_precision": ("auto", "no", "bf16"),
    "judge.classifier.mixed_precision": ("auto", "no", "bf16"),
    "generator.pretrain.mixed_precision": ("auto", "no", "bf16"),
    "sampling.mixed_precision": ("auto", "no", "bf16"),
    "ti.mixed_precision": ("auto", "no", "fp16", "bf16"),
    "lora.mixed_precision": ("auto", "no", "fp16", "bf16"),
}


@pytest.mark.parametrize("key", sorted(STAGES))
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(cpu_kind, key, monkeypatch):
    allowed = STAGES[key]
    cpu_kind(False)
    assert P.resolve("cpu", "auto", key, allowed) == "fp32"
    assert P.resolve("cpu", None, key, allowed) == "fp32"  # unset = auto
    cpu_kind(True)
    assert P.resolve("cpu", "auto", key, allowed) == "bf16"
    for native in (True, False):  # explicit settings are kept on both kinds
        cpu_kind(native)
        assert P.resolve("cpu", "no", key, allowed) == "fp32"
        assert P.resolve("cpu", "bf16", key, allowed) == "bf16"
    # GPUs keep their choice: bf16 autocast, or half weights (fp16 where the GPU has no bf16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert P.resolve("cuda", "auto", key, allowed) == ("fp16" if "fp16" in allowed else "bf16")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert P.resolve("cuda", "auto", key, allowed) == "bf16"
    with pytest.raises(TibalanceError, match=f"{key}: 'fp8' is not one of"):
        P.resolve("cpu", "fp8", key, allowed)


@pytest.mark.parametrize("key", ["ti.mixed_precision", "lora.mixed_precision", "sampling.mixed_precision"])
def test_the_pipeline_stages_auto_is_fp32_on_every_cpu(cpu_kind, key, monkeypatch):
    """TI, LoRA and sampling (generator.pipeline_dtypes): auto is fp32 on a CPU
    with native bf16 too (bf16 autocast measured slower there:
    docs/performance.md); bf16 when asked; on a GPU half-precision
    frozen weights under autocast, as before."""
    from tibalance.runtime import pipeline_dtypes

    for native in (True, False):
        cpu_kind(native)
        assert pipeline_dtypes("cpu", "auto", key) == (None, None)
        assert pipeline_dtypes("cpu", None, key) == (None, None)
        assert P.run_record()["precision"][key] == "fp32"
        assert pipeline_dtypes("cpu", "bf16", key) == (None, torch.bfloat16)
        assert pipeline_dtypes("cpu", "no", key) == (None, None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert pipeline_dtypes("cuda", "auto", key) == (torch.bfloat16, torch.bfloat16)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert pipeline_dtypes("cuda", "auto", key) == (torch.float16, torch.float16)


def test_explicit_bf16_without_native_support_warns_once(cpu_kind, caplog):
    cpu_kind(False)
    with caplog.at_level(logging.WARNING, logger="tibalance.precision"):
        assert P.autocast_bf16("cpu", "bf16", "classifier.mixed_precision")
        assert P.autocast_bf16("cpu", "bf16", "classifier.mixed_precision")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "classifier.mixed_precision" in lines[0] and "emulated" in lines[0]
    assert "several times slower" in lines[0] and "docs/performance.md" in lines[0] and "AVX2" in lines[0]
    caplog.clear()
    cpu_kind(True)
    with caplog.at_level(logging.WARNING, logger="tibalance.precision"):
        assert P.autocast_bf16("cpu", "bf16", "classifier.mixed_precision")
    assert not caplog.records


def test_the_detection_sees_an_isa_cap():
    """The real detection (not mocked): with torch and oneDNN capped at AVX2 (how
    a CPU without native bf16 is imitated on one that has it) auto picks fp32."""
    code = ("import json, tibalance.precision as P; "
            "print(json.dumps([P.cpu_info(), P.resolve('cpu', 'auto', 'classifier.mixed_precision')]))")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    info, resolved = json.loads(out.stdout.strip().splitlines()[-1])
    assert info["capability"] == "AVX2" and info["native_bf16"] is False and resolved == "fp32"


def test_sidecar_and_cost_table_record_cpu_and_precision(cpu_kind, tmp_path):
    from tibalance import cost

    cpu_kind(False)
    P.resolve("cpu", "bf16", "classifier.mixed_precision")
    Sidecar(0).write(tmp_path / "a.meta.json")
    P._resolved.clear()
    P.resolve("cpu", "auto", "sampling.mixed_precision")
    Sidecar(0).write(tmp_path / "b.meta.json")
    a = json.loads((tmp_path / "a.meta.json").read_text())
    assert a["cpu_capability"] == "AVX2" and a["cpu_native_bf16"] is False and a["bf16_emulated"] is True
    assert a["precision"] == {"classifier.mixed_precision": "bf16"} and a["torch_threads"] >= 1
    for name, wall in (("a", 10.0), ("b", 20.0)):
        (tmp_path / f"{name}.tsv").write_text(f"s\tcpu_time\tmax_rss\n{wall}\t{wall}\t100\n")
    jobs = [{"rule": "retrain", "method": "ti", "benchmark": str(tmp_path / "a.tsv"), "meta": str(tmp_path / "a.meta.json")},
            {"rule": "sample", "method": "ti", "benchmark": str(tmp_path / "b.tsv"), "meta": str(tmp_path / "b.meta.json")}]
    rows = cost.job_rows(jobs)
    assert list(rows.precision) == ["bf16 (emulated)", "fp32"]
    stages = cost.stage_table(rows)
    assert dict(zip(stages.stage, stages.precision)) == {"retrain": "bf16 (emulated)", "sample": "fp32",
                                                         "total": "bf16 (emulated)/fp32"}
    md = cost.markdown(stages, cost.method_table(rows, ["ti"]), jobs=rows)
    assert "CPU: Test CPU (AVX2, no native bf16)" in md
    assert md.count("computed in bf16 on a CPU without native bf16") == 1 and "stages retrain" in md
    assert "| precision |" in md


def _watch_unet(monkeypatch):
    from diffusers import UNet2DConditionModel

    dtypes, forward = [], UNet2DConditionModel.forward

    def watch(self, sample, *a, **kw):
        out = forward(self, sample, *a, **kw)
        if torch.is_grad_enabled():
            dtypes.append((out.sample if hasattr(out, "sample") else out[0]).dtype)
        return out

    monkeypatch.setattr(UNet2DConditionModel, "forward", watch)
    return dtypes


@pytest.mark.parametrize("native", [False, True])
def test_ti_and_lora_compute_in_fp32_on_a_cpu_unless_asked(tiny_sd, seed_images, tmp_path, monkeypatch, cpu_kind,
                                                          native):
    """ti and lora on a CPU: with mixed_precision auto the UNet's training forward
    computes in fp32 on either CPU kind (docs/performance.md); with bf16 under
    bf16 autocast; the trained parameters are fp32 either way."""
    from safetensors.torch import load_file

    from tibalance.inversion import train_textual_inversion
    from tibalance.lora import train_lora

    cpu_kind(native)
    dtypes = _watch_unet(monkeypatch)
    common = dict(steps=2, resolution=32, batch_size=2, augment_variants=1, checkpoint_every=0,
                  preview_images=1, preview_steps=1)
    for setting, want in (("auto", torch.float32), ("bf16", torch.bfloat16)):
        out = tmp_path / setting
        dtypes.clear()
        train_textual_inversion(tiny_sd, seed_images, "ankle_boot", "Ankle boot",
                                {**common, "mixed_precision": setting}, 3, str(out / "e.safetensors"),
                                str(out / "loss.csv"), str(out / "p.png"), str(out / "resume"))
        assert set(dtypes) == {want}
        assert {t.dtype for t in load_file(str(out / "e.safetensors")).values()} == {torch.float32}
        dtypes.clear()
        train_lora(tiny_sd, seed_images, "ankle_boot", "Ankle boot", {**common, "mixed_precision": setting}, 3,
                   str(out / "w"), str(out / "loss.csv"), str(out / "p.png"), str(out / "resume"))
        assert set(dtypes) == {want}
        resolved = "fp32" if setting == "auto" else "bf16"
        assert P._resolved == {"ti.mixed_precision": resolved, "lora.mixed_precision": resolved}
