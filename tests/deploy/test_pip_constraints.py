"""deploy/constraints/pip_constraints.py, the Dockerfile's guard that installing specserve changes no package the Neuron
image pinned, against freeze lists that follow each image's pins (aws-neuron/deep-learning-containers
docker/pytorch/inference/2.7.0/Dockerfile.neuronx for SDK 2.25; issue 21's table for 2.26 and 2.28). Also: specserve's
own requirements are satisfiable inside each image without upgrading anything."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
MODULE = ROOT / "deploy" / "constraints" / "pip_constraints.py"
_spec = importlib.util.spec_from_file_location("pip_constraints", MODULE)
pc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(pc)

# What `pip freeze` prints in each image (the lines that matter; conda-installed packages show as file:// links).
# Neuron package builds of 2.26/2.28 are placeholders of the right shape; the Python-stack pins follow the images.
FREEZES = {
    "sdk2.25": """\
boto3==1.38.46
huggingface-hub==0.33.1
neuronx-cc==2.20.9961.0+0acef03a
neuronx_distributed==0.14.18461+9ac233f2
neuronx_distributed_inference==0.5.9230+dcf1e2da
numpy==1.23.5
packaging @ file:///home/conda/feedstock_root/build_artifacts/packaging_1733203243479/work
pandas==1.5.3
protobuf==3.20.3
PyYAML==6.0.2
requests @ file:///home/conda/feedstock_root/build_artifacts/requests_1733217035951/work
safetensors==0.5.3
scipy==1.10.1
tokenizers==0.21.1
torch==2.7.0
torch-neuronx==2.7.0.2.9.9357+08e1f40d
torchvision==0.22.0
tqdm==4.67.1
transformers==4.48.3
transformers-neuronx==0.13.1216
""",
    "sdk2.26": """\
huggingface-hub==0.34.4
neuronx-cc==2.21.18209.0+043b1bf7
neuronx_distributed==0.15.22404+1f27bddf
neuronx_distributed_inference==0.6.10598+a59fdc00
numpy==1.23.5
protobuf==3.20.3
PyYAML==6.0.2
safetensors==0.6.2
tokenizers==0.21.4
torch==2.8.0
torch-neuronx==2.8.0.2.10.13553+1e4dd6ca
transformers==4.51.3
""",
    "sdk2.28": """\
huggingface-hub==0.35.3
neuronx-cc==2.22.12471.0+b4a00d10
neuronx_distributed==0.16.25997+f431c02e
neuronx_distributed_inference==0.8.15211+c7843ba0
numpy==1.26.4
PyYAML==6.0.3
safetensors==0.6.2
tokenizers==0.22.1
torch==2.9.0
torch-neuronx==2.9.0.2.12.22436+0f1dac25
transformers==4.57.1
""",
}


def fake_version(name: str) -> str:
    return {"packaging": "24.2", "requests": "2.32.3"}[name]


def pins(image: str) -> dict[str, str]:
    return pc.parse_freeze(FREEZES[image].splitlines(), version_of=fake_version)


def test_every_package_is_pinned_links_resolved_names_canonical():
    lines = pc.constraints(FREEZES["sdk2.25"].splitlines(), version_of=fake_version)
    assert "numpy==1.23.5" in lines and "torch-neuronx==2.7.0.2.9.9357+08e1f40d" in lines
    assert "neuronx-distributed-inference==0.5.9230+dcf1e2da" in lines and "pyyaml==6.0.2" in lines
    assert "requests==2.32.3" in lines and "packaging==24.2" in lines  # pip refuses links in a constraints file
    assert not any("@" in line for line in lines)
    assert len(lines) == len(FREEZES["sdk2.25"].splitlines())  # nothing dropped


def test_editable_comments_and_options():
    got = pc.parse_freeze(["# a comment", "", "-i https://example.invalid/simple",
                           "-e git+https://example.invalid/x.git@abc#egg=My_Pkg", "torch==2.7.0  # pinned"],
                          version_of=lambda n: {"My_Pkg": "0.1"}[n])
    assert got == {"my-pkg": "0.1", "torch": "2.7.0"}
    with pytest.raises(ValueError, match="cannot read"):
        pc.parse_freeze(["what is this"])


def test_check_reports_upgrades_and_removals():
    before = pins("sdk2.25")
    assert pc.changed(before, dict(before, specserve="0.1.0")) == []  # new packages are fine
    after = dict(before, numpy="1.26.4")
    del after["protobuf"]
    assert pc.changed(before, after) == ["numpy changed 1.23.5 -> 1.26.4", "protobuf 3.20.3 was removed"]


def test_cli_constraints_and_check(tmp_path):
    freeze = "numpy==1.23.5\ntorch==2.7.0\n"
    out = subprocess.run([sys.executable, str(MODULE), "constraints"], input=freeze, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "numpy==1.23.5\ntorch==2.7.0\n"
    before = tmp_path / "before.txt"
    before.write_text(freeze)
    same = subprocess.run([sys.executable, str(MODULE), "check", str(before)], input=freeze + "specserve==0.1.0\n",
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stderr
    moved = subprocess.run([sys.executable, str(MODULE), "check", str(before)], input="numpy==2.2.6\ntorch==2.7.0\n",
                           capture_output=True, text=True)
    assert moved.returncode == 1 and "numpy changed 1.23.5 -> 2.2.6" in moved.stderr


def _conflicts(requirements: list[str], pinned: dict[str, str]) -> list[str]:
    """Requirements that the image's pinned version of the same package does not satisfy."""
    out = []
    for text in requirements:
        req = Requirement(text)
        have = pinned.get(pc.canonical(req.name))
        if have is not None and not req.specifier.contains(have, prereleases=True):
            out.append(f"{req} vs {have}")
    return out


@pytest.mark.parametrize("image", list(FREEZES))
def test_specserve_requirements_fit_each_image(image):
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert _conflicts(deps, pins(image)) == []


def test_a_requirement_above_the_image_pin_is_caught():
    """The finding of issue 21: numpy>=1.24 would have made pip upgrade numpy under the SDK 2.25/2.26 stack."""
    assert _conflicts(["numpy>=1.24", "torch>=2.7"], pins("sdk2.25")) == ["numpy>=1.24 vs 1.23.5"]
    assert _conflicts(["numpy>=1.24"], pins("sdk2.28")) == []
