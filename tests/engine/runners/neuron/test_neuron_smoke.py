"""`specserve neuron-smoke` through the CLI, on the fakes: passes when the runner matches torch (decode with free
slots, verify at every compiled K, a sit-out slot, fused mode), prints the library version, fails (exit 1) when logits
drift, and exits 2 naming what is missing where no Neuron runner can run."""

from __future__ import annotations

from server.cli import main


def test_smoke_passes_on_a_faithful_runner(neuron_backend, capsys, tmp_path):
    assert main(["neuron-smoke", "--backend", neuron_backend, "--k", "2,4", "--tokens", "6",
                 "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.strip().endswith("PASS")
    version = "transformers-neuronx 0.13.x" if neuron_backend == "neuron-tnx" else "neuronx-distributed-inference 0.8.0"
    assert version in out.splitlines()[0]
    ks = ["K=2", "K=4"] if neuron_backend == "neuron-tnx" else ["K=4"]  # NxDI compiles one speculation_length
    for check in [*ks, "free slots", "sit-out slot", "1 live + 3 free"]:
        assert check in out
    assert out.count("PASS") == 4 + len(ks) + 1  # prefill, decode, verifies, sit-out, 1-live, verdict


def test_smoke_fused(tnx, capsys, tmp_path):
    assert main(["neuron-smoke", "--backend", "neuron-tnx", "--fused", "--k", "3", "--tokens", "8",
                 "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    fused = next(line for line in out.splitlines() if line.startswith("fused greedy"))
    assert "PASS" in fused and "equal" in fused
    calls = int(fused.split(",")[1].split()[0])
    assert calls <= 4, fused  # 9 tokens at k + 1 = 4 per call once speculating: the device ran ahead


def test_smoke_fused_needs_tnx(nxdi, capsys):
    assert main(["neuron-smoke", "--backend", "neuron-nxdi", "--fused"]) == 2


def test_smoke_fails_when_logits_drift(tnx, monkeypatch, capsys, tmp_path):
    forward = tnx.LlamaForSampling.forward
    monkeypatch.setattr(tnx.LlamaForSampling, "forward", lambda self, *a, **k: forward(self, *a, **k) * 1.05)
    assert main(["neuron-smoke", "--backend", "neuron-tnx", "--tokens", "4", "--workdir", str(tmp_path)]) == 1
    assert "FAIL" in capsys.readouterr().out


def test_smoke_without_neuron_names_what_is_missing(capsys, monkeypatch, tmp_path):
    import engine.runners.neuron_common as nc

    monkeypatch.setattr(nc, "NEURON_DEVICE", str(tmp_path / "absent"))
    assert main(["neuron-smoke"]) == 2
    err = capsys.readouterr().err
    assert "transformers-neuronx is not installed" in err and "neuronx-distributed-inference" in err
