"""Weights (safetensors + sidecar) and training checkpoints: round trips and every way they can break."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from deqir.errors import CheckpointError
from deqir.priors.dncnn import DnCNN
from deqir.train.checkpoint import (
    fold_spectral_norm,
    load_checkpoint,
    load_state_checked,
    load_weights,
    read_sidecar,
    save_checkpoint,
    save_weights,
    sidecar_path,
)


def _net(width=8, **kw):
    torch.manual_seed(0)
    return DnCNN(depth=3, width=width, **kw)


def _flip_byte(path, offset_from_end=10):
    data = bytearray(path.read_bytes())
    data[len(data) - offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_weights_roundtrip_with_sidecar(tmp_path):
    net = _net(spectral_norm=True)
    path = save_weights(
        net,
        tmp_path / "w.safetensors",
        config={"model": {"name": "dncnn"}},
        metrics={"psnr": 31.5},
        extra={"step": 7},
    )
    side = read_sidecar(path)
    assert side["config"] == {"model": {"name": "dncnn"}} and side["metrics"] == {"psnr": 31.5}
    assert side["step"] == 7 and {"deqir", "git_commit", "torch"} <= set(side["code"])
    assert len(side["sha256"]) == 64 and side["shapes"]
    other = _net(spectral_norm=True)
    for p in other.parameters():
        p.data.zero_()
    load_weights(path, other)
    for (k, a), b in zip(net.state_dict().items(), other.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert set(load_weights(path)) == set(net.state_dict())
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_weights_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match=r"nope.safetensors not found"):
        load_weights(tmp_path / "nope.safetensors")
    with pytest.raises(CheckpointError, match="must end in .safetensors"):
        save_weights(_net(), tmp_path / "w.pt")


def test_weights_tampered_is_refused(tmp_path):
    path = save_weights(_net(), tmp_path / "w.safetensors")
    _flip_byte(path)
    with pytest.raises(CheckpointError) as err:
        load_weights(path, _net())
    assert str(path) in str(err.value) and "SHA-256" in str(err.value) and "retrain" in str(err.value)


def test_weights_truncated_is_refused(tmp_path):
    path = save_weights(_net(), tmp_path / "w.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_weights(path)
    sidecar_path(path).unlink()  # without a sidecar the file itself is checked
    with (
        pytest.warns(UserWarning, match="no JSON sidecar"),
        pytest.raises(CheckpointError, match="not a valid safetensors file"),
    ):
        load_weights(path)


def test_weights_without_sidecar_load_with_warning(tmp_path):
    net = _net()
    path = save_weights(net, tmp_path / "w.safetensors")
    os.remove(sidecar_path(path))
    with pytest.warns(UserWarning, match="no JSON sidecar"):
        state = load_weights(path)
    assert torch.equal(state["body.0.weight"], net.state_dict()["body.0.weight"])


def test_weights_bad_sidecar(tmp_path):
    path = save_weights(_net(), tmp_path / "w.safetensors")
    sidecar_path(path).write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_weights(path)
    sidecar_path(path).write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not a deqir weights sidecar"):
        load_weights(path)


def test_weights_wrong_architecture_is_refused(tmp_path):
    path = save_weights(_net(width=8), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError) as err:
        load_weights(path, _net(width=16))
    msg = str(err.value)
    assert str(path) in msg and "shape mismatch for body.0.weight" in msg
    assert "(file (8, 1, 3, 3), model (16, 1, 3, 3))" in msg
    assert "configuration it was trained with" in msg
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(path, DnCNN(depth=4, width=8))
    with pytest.raises(CheckpointError, match="unexpected"):
        load_weights(path, DnCNN(depth=2, width=8))
    with pytest.raises(CheckpointError, match="missing"):  # spectral norm renames parameters
        load_weights(path, _net(spectral_norm=True))


def _trained_sn(net, steps=3):
    """A spectral-normalised network whose power iteration has moved (training mode) and whose
    weights changed, so ``u``, ``v`` and ``W`` are not their initial values."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(steps):
        opt.zero_grad()
        net(torch.rand(2, 1, 16, 16)).pow(2).mean().backward()
        opt.step()
    return net.eval()


def test_spectral_norm_weights_load_into_the_plain_network(tmp_path):
    sn = _trained_sn(_net(spectral_norm=True))
    path = save_weights(sn, tmp_path / "sn.safetensors")
    plain = load_weights(path, _net(spectral_norm=False)).eval()
    x = torch.rand(3, 1, 20, 20)
    with torch.no_grad():
        assert torch.allclose(plain(x), sn(x), atol=1e-6)
        # the raw kernels alone would not do: their norms differ from 1 by far more than that
        raw = _net(spectral_norm=False).eval()
        state = {
            k.replace("parametrizations.weight.original", "weight"): v for k, v in sn.state_dict().items()
        }
        raw.load_state_dict({k: v for k, v in state.items() if "._" not in k})
        assert not torch.allclose(raw(x), sn(x), atol=1e-3)
    # the other direction stays an error: a plain file has no normalisation to restore
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(save_weights(plain, tmp_path / "plain.safetensors"), _net(spectral_norm=True))


def test_fold_spectral_norm_transposed_convolution_and_kept_layers():
    torch.manual_seed(1)
    sn_net = torch.nn.Sequential(
        torch.nn.utils.parametrizations.spectral_norm(torch.nn.Conv2d(1, 4, 3, padding=1)),
        torch.nn.utils.parametrizations.spectral_norm(torch.nn.ConvTranspose2d(4, 6, 2, stride=2)),
    )
    sn_net.train()
    for _ in range(3):
        sn_net(torch.rand(1, 1, 8, 8))  # power iterations
    sn_net.eval()
    target = torch.nn.Sequential(
        torch.nn.utils.parametrizations.spectral_norm(torch.nn.Conv2d(1, 4, 3, padding=1)),
        torch.nn.ConvTranspose2d(4, 6, 2, stride=2),
    )
    state = fold_spectral_norm(sn_net.state_dict(), target)
    assert "0.parametrizations.weight.original" in state and "1.weight" in state  # layer 0 kept
    assert not [k for k in state if k.startswith("1.parametrizations")]
    target.load_state_dict(state)
    target.eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.allclose(target(x), sn_net(x), atol=1e-6)
    broken = {k: v for k, v in sn_net.state_dict().items() if not k.endswith("_v")}
    with pytest.raises(CheckpointError, match="power-iteration vectors"):
        fold_spectral_norm(broken, target)


def test_fold_spectral_norm_one_dimensional_weight():
    """torch normalises a 1-D weight by its norm and keeps no power-iteration vectors for it."""

    class Scale(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.tensor([3.0, -4.0, 12.0]))

        def forward(self, x):
            return x * self.weight

    sn = torch.nn.utils.parametrizations.spectral_norm(Scale()).eval()
    state = fold_spectral_norm(sn.state_dict(), Scale())
    assert list(state) == ["weight"]
    torch.testing.assert_close(state["weight"], torch.tensor([3.0, -4.0, 12.0]) / 13.0)
    plain = Scale()
    plain.load_state_dict(state)
    x = torch.rand(5, 3)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), sn(x))


def _train_state():
    net = _net()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    net(torch.rand(2, 1, 8, 8)).sum().backward()
    opt.step()
    return {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "step": 3,
        "best": 30.5,
        "rng": [{"torch": torch.get_rng_state(), "python": [3, [1, 2], None]}],
    }


def test_checkpoint_roundtrip_weights_only(tmp_path):
    state = _train_state()
    path = save_checkpoint(state, tmp_path / "checkpoint.pt")
    back = load_checkpoint(path)
    assert back["step"] == 3 and back["best"] == 30.5
    assert torch.equal(back["rng"][0]["torch"], state["rng"][0]["torch"])
    assert torch.equal(back["model"]["body.0.weight"], state["model"]["body.0.weight"])
    assert back["optimizer"]["state"][0]["step"] == state["optimizer"]["state"][0]["step"]
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_checkpoint_missing(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "checkpoint.pt")


def test_checkpoint_tampered(tmp_path):
    path = save_checkpoint(_train_state(), tmp_path / "checkpoint.pt")
    size = path.stat().st_size
    data = bytearray(path.read_bytes())
    data[size // 2] ^= 0xFF  # inside the payload
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9, 0.999])
def test_checkpoint_truncated(tmp_path, keep):
    path = save_checkpoint(_train_state(), tmp_path / "checkpoint.pt")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(CheckpointError, match=r"checkpoint.pt"):
        load_checkpoint(path)


class Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_never_unpickles_code(tmp_path):
    path, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    with open(path, "wb") as f:
        pickle.dump({"x": Evil(marker)}, f, protocol=2)
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.save({"model": {}}, path)  # a torch file, but not ours
    with pytest.raises(CheckpointError, match="not a deqir training checkpoint"):
        load_checkpoint(path)


def test_load_state_checked_explains_mismatch(tmp_path):
    with pytest.raises(CheckpointError, match=r"ckpt.pt does not fit this model \(DnCNN\): shape mismatch"):
        load_state_checked(_net(width=16), _net(width=8).state_dict(), tmp_path / "ckpt.pt")
