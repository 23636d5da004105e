"""`specserve neuron-smoke` through the CLI, on the contract models: passes when the runner matches torch, fails (exit 1)
when its logits drift, and exits 2 naming what is missing where no Neuron runner can run."""

from __future__ import annotations

from server.cli import main


def test_smoke_passes_on_a_faithful_runner(neuron_backend, capsys, tmp_path):
    assert main(["neuron-smoke", "--backend", neuron_backend, "--tokens", "6", "--workdir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and out.strip().endswith("PASS")
    assert out.count("PASS") == 5  # four checks and the verdict


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
