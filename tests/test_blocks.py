"""MBConv's rules: residual, squeeze width, stochastic depth, TF padding, checkpointing; and
FusedMBConv's against torchvision's."""

import functools

import pytest
import torch
from torch import nn

import effnet_edu as ee
from effnet_edu.blocks import TFSamePadConv2d


def test_residual_rule():
    assert ee.MBConv(16, 16, 6, 3, 1).use_residual
    assert not ee.MBConv(16, 16, 6, 3, 2).use_residual  # stride 2 changes the shape
    assert not ee.MBConv(16, 24, 6, 3, 1).use_residual  # channels change
    block = ee.MBConv(16, 16, 6, 3, 1).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        branch = block.project(block.se(block.depthwise(block.expand(x))))
        assert torch.allclose(block(x), branch + x)


@pytest.mark.parametrize(
    "in_channels, out_channels, expand_ratio, stride",
    [(24, 24, 1, 1), (24, 32, 1, 1), (24, 24, 4, 1), (24, 24, 4, 2), (24, 48, 4, 2)],
)
def test_fused_mbconv_equals_torchvision(in_channels, out_channels, expand_ratio, stride):
    from torchvision.models.efficientnet import FusedMBConv, FusedMBConvConfig

    torch.manual_seed(0)
    config = FusedMBConvConfig(expand_ratio, 3, stride, in_channels, out_channels, 1)
    theirs = FusedMBConv(config, 0.0, functools.partial(nn.BatchNorm2d, eps=1e-3)).eval()
    ours = ee.FusedMBConv(in_channels, out_channels, expand_ratio, 3, stride, bn_eps=1e-3).eval()
    assert ours.use_residual == theirs.use_res_connect
    # Expansion rule: expand_ratio 1 is a single k x k conv; else k x k conv + 1x1 projection.
    assert (ours.project is None) == (len(theirs.block) == 1)
    assert ee.count_params(ours) == ee.count_params(theirs)
    with torch.no_grad():  # random BatchNorm statistics, so that BatchNorm is not the identity
        for m in theirs.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)

    def torchvision_name(key):  # ours -> theirs: "project.bn.weight" -> "block.1.1.weight"
        part, layer, param = key.split(".")
        return f"block.{('fused', 'project').index(part)}.{('conv', 'bn').index(layer)}.{param}"

    theirs_state = theirs.state_dict()
    mapping = {k: torchvision_name(k) for k in ours.state_dict()}
    assert sorted(mapping.values()) == sorted(theirs_state)  # every tensor, once
    ours.load_state_dict({k: theirs_state[t] for k, t in mapping.items()})
    x = torch.randn(2, in_channels, 16, 16)
    with torch.no_grad():
        assert torch.allclose(ours(x), theirs(x), atol=1e-5)
    with pytest.raises(ValueError, match="no squeeze-and-excitation"):
        ee.FusedMBConv(in_channels, out_channels, expand_ratio, 3, stride, se_ratio=0.25)


def test_squeeze_width_comes_from_input_channels():
    block = ee.MBConv(16, 24, expand_ratio=6, kernel_size=3, stride=2)
    assert block.se.reduce.in_channels == 96 and block.se.reduce.out_channels == 4
    assert ee.MBConv(32, 16, 1, 3, 1).expand is None  # expand ratio 1: no expansion conv


def test_stochastic_depth_drops_whole_samples_in_training_only():
    x = torch.ones(1000, 4, 2, 2)
    out = ee.stochastic_depth(x, 0.25, training=True)
    per_sample = out.flatten(1)
    kept = (per_sample != 0).all(dim=1)
    assert ((per_sample == 0).all(dim=1) | kept).all()  # all or nothing per sample
    assert torch.allclose(per_sample[kept], torch.full_like(per_sample[kept], 1 / 0.75))
    assert 0.70 < kept.float().mean() < 0.80
    assert torch.equal(ee.stochastic_depth(x, 0.25, training=False), x)

    block = ee.MBConv(8, 8, 6, 3, 1, se_ratio=0.25, stochastic_depth=0.5)
    block.eval()
    y = torch.randn(4, 8, 5, 5)
    assert torch.equal(block(y), block(y))  # eval mode is deterministic


def test_tf_same_padding_output_size_and_asymmetry():
    conv = TFSamePadConv2d(1, 1, 3, stride=2, bias=False)
    nn.init.ones_(conv.weight)
    for size in (224, 225, 7, 8):
        assert conv(torch.zeros(1, 1, size, size)).shape[-1] == -(-size // 2)
    # Even input, stride 2: TF pads 0 on the left/top and 1 on the right/bottom.
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = conv(x)
    assert out[0, 0, 0, 0] == x[0, 0, :3, :3].sum()


def test_gradient_checkpointing_gives_the_same_gradients():
    # No dropout: its random mask would differ between the two runs.
    plain = ee.efficientnet("b0", num_classes=5, stochastic_depth=0.0, dropout=0.0).double()
    lean = ee.efficientnet(
        "b0", num_classes=5, stochastic_depth=0.0, dropout=0.0, gradient_checkpointing=True
    ).double()
    lean.load_state_dict(plain.state_dict())
    assert lean.gradient_checkpointing and not plain.gradient_checkpointing
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    plain(x).square().sum().backward()
    lean(x).square().sum().backward()
    for (name, p), q in zip(plain.named_parameters(), lean.parameters(), strict=True):
        assert torch.allclose(p.grad, q.grad, atol=1e-9, rtol=1e-7), name
    # The recomputation must not update BatchNorm's running statistics a second time.
    for (name, a), b in zip(plain.named_buffers(), lean.buffers(), strict=True):
        assert torch.equal(a, b), name


def test_training_gradients_equal_torchvision():
    from torchvision.models import efficientnet_b0

    theirs = efficientnet_b0(num_classes=5, stochastic_depth_prob=0.0, dropout=0.0).double()
    ours = ee.efficientnet("b0", num_classes=5, stochastic_depth=0.0, dropout=0.0).double()
    ee.load_torchvision_state_dict(ours, theirs.state_dict())
    x = torch.randn(2, 3, 64, 64, dtype=torch.float64)
    theirs(x).square().sum().backward()
    ours(x).square().sum().backward()
    assert torch.allclose(
        ours.stem.conv.weight.grad, theirs.features[0][0].weight.grad, atol=1e-9, rtol=1e-9
    )
    assert torch.allclose(
        ours.classifier.weight.grad, theirs.classifier[1].weight.grad, atol=1e-9, rtol=1e-9
    )
