"""Fixtures that install an executable model of a Neuron library's contract and pretend a Neuron device exists."""

from __future__ import annotations

import pytest

import engine.runners.neuron_common as neuron_common
from tests.engine.runners.neuron import fake_nxdi, fake_transformers_neuronx


@pytest.fixture
def neuron_device(tmp_path, monkeypatch):
    dev = tmp_path / "neuron0"
    dev.write_text("")
    monkeypatch.setattr(neuron_common, "NEURON_DEVICE", str(dev))
    return dev


@pytest.fixture
def tnx(monkeypatch, neuron_device):
    fake_transformers_neuronx.install(monkeypatch)
    return fake_transformers_neuronx


@pytest.fixture
def nxdi(monkeypatch, neuron_device):
    fake_nxdi.install(monkeypatch)
    return fake_nxdi


@pytest.fixture(params=["neuron-tnx", "neuron-nxdi"])
def neuron_backend(request, monkeypatch, neuron_device) -> str:
    """Each Neuron backend in turn, with its library's contract model installed."""
    (fake_transformers_neuronx if request.param == "neuron-tnx" else fake_nxdi).install(monkeypatch)
    return request.param
