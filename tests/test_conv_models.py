"""The conv benchmark models: the published layouts, and soap_cuda.convert turns every conv and
linear layer of them into an FA layer with the same forward."""
import torch
from torch import nn

import soap_cuda
from soap_cuda.experiments.conv_models import lenet5, resnet20


def _count(model, types):
    return sum(isinstance(m, types) for m in model.modules())


def test_lenet5_layout():
    model = lenet5()
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    assert _count(model, nn.Conv2d) == 3 and _count(model, nn.Linear) == 2
    assert [m.out_channels for m in model if isinstance(m, nn.Conv2d)] == [6, 16, 120]
    assert sum(p.numel() for p in model.parameters()) == 61_706  # LeNet-5's count


def test_resnet20_layout():
    model = resnet20()
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert _count(model, nn.Conv2d) == 19 and _count(model, nn.Linear) == 1  # 20 weight layers
    params = sum(p.numel() for p in model.parameters())
    assert 0.26e6 < params < 0.28e6  # He et al.: 0.27M


def test_converted_models_keep_their_forward():
    torch.manual_seed(0)
    for build, shape in ((lenet5, (3, 1, 32, 32)), (resnet20, (3, 3, 32, 32))):
        model = build().eval()
        fa = soap_cuda.convert(model, feedback="rescaled_sign", sync_every=1000)
        assert _count(model, (nn.Conv2d, nn.Linear)) == _count(fa, (soap_cuda.FAConv2d,
                                                                   soap_cuda.FALinear))
        assert not any(type(m) in (nn.Conv2d, nn.Linear) for m in fa.modules())
        x = torch.randn(shape)
        torch.testing.assert_close(fa(x), model(x), rtol=0, atol=0)
