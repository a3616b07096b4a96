"""The model zoo of tests/registry/test_zoo.py: architectures people bring to lowp, as tiny random-weight models in
eval mode, each with its inputs.

torchvision and timm are not here: the only torchvision wheel for torch 2.13 on this project's CPU machines
(0.28.0+cu130, which timm requires) links libtorch_cuda, so its C ops do not load against torch 2.13.0+cpu and
`import torchvision` raises (torchvision::nms does not exist). Worse, installed it breaks transformers, which
imports torchvision wherever it is installed: every transformers model then fails to import. Their block types
come from transformers' ResNet, ConvNext, EfficientNet and ViT instead, and two models below copy the torchvision
blocks transformers has no twin of (BasicBlock's ReLU shared by two call sites; MobileNetV3's in-place Hardswish,
squeeze-excitation and in-place Dropout after a Linear), and one copies timm's EfficientNet-B0 blocks (its
BatchNormAct2d, with SiLU inside, and its He-normal init).

transformers' MobileNetV2 is not here: with random weights it is chaotic (noise at 40 dB on its input leaves
10 dB at its logits once its BatchNorms hold statistics of its inputs; at their initial ones its logits are 1e-27),
so no output SQNR could tell lowp's error from the model's own. tests/registry/test_graph.py covers its graph.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

IMAGE = (2, 3, 32, 32)  # batch 2 of 32 x 32 RGB: every vision model here keeps a few pixels at its last stage
TOKENS = (2, 8)  # batch 2 of 8 tokens
VOCAB = 99


@dataclass
class Zoo:
    """One architecture: build() -> the model (float32, eval mode, random weights); inputs(seed) -> the keyword
    arguments of one call; output(result) -> the tensor to compare (logits, or the last hidden state)."""

    build: Callable[[], nn.Module]
    inputs: Callable[[int], dict[str, torch.Tensor]]
    output: Callable[[object], torch.Tensor]


def _image(seed: int) -> dict[str, torch.Tensor]:
    return {"pixel_values": torch.randn(IMAGE, generator=torch.Generator().manual_seed(seed))}


def _tokens(seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, TOKENS, generator=torch.Generator().manual_seed(seed))
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _seq2seq(seed: int) -> dict[str, torch.Tensor]:
    ids = torch.randint(0, VOCAB, TOKENS, generator=torch.Generator().manual_seed(seed))
    return {**_tokens(seed), "decoder_input_ids": ids[:, :5]}


def _logits(result) -> torch.Tensor:
    return result if isinstance(result, torch.Tensor) else result.logits


def _hidden(result) -> torch.Tensor:
    return result.last_hidden_state


# ------------------------------------------------------------------------------- torchvision's blocks, copied


class BasicBlock(nn.Module):
    """torchvision.models.resnet.BasicBlock: one nn.ReLU(inplace=True) called after bn1 and after the residual add."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += x
        return self.relu(out)


class TvResNet(nn.Module):
    """torchvision's resnet18 in small: stem conv / BN / in-place ReLU, two BasicBlocks, pooling, fc.
    pixel_values: (N, 3, H, W) float32 -> (N, 10) float32 logits."""

    def __init__(self, width: int = 16):
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = nn.Sequential(BasicBlock(width), BasicBlock(width))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, 10)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.layer1(self.relu(self.bn1(self.conv1(pixel_values))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class TvMobileNetV3(nn.Module):
    """torchvision's mobilenet_v3_small in small: conv / BN / in-place Hardswish stem, an inverted residual with
    squeeze-excitation (Hardsigmoid), and its classifier: Linear, Hardswish(inplace=True), Dropout(inplace=True),
    Linear. pixel_values: (N, 3, H, W) float32 -> (N, 10) float32 logits."""

    def __init__(self, width: int = 16, expanded: int = 32):
        super().__init__()

        def conv_bn(cin, cout, k, act, stride=1, groups=1):
            return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                 nn.BatchNorm2d(cout), act)

        self.stem = conv_bn(3, width, 3, nn.Hardswish(inplace=True), stride=2)
        self.expand = conv_bn(width, expanded, 1, nn.Hardswish(inplace=True))
        self.depthwise = conv_bn(expanded, expanded, 3, nn.Hardswish(inplace=True), groups=expanded)
        self.se = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(expanded, 8, 1), nn.ReLU(inplace=True),
                                nn.Conv2d(8, expanded, 1), nn.Hardsigmoid(inplace=True))
        self.project = conv_bn(expanded, width, 1, nn.Identity())
        self.last = conv_bn(width, 48, 1, nn.Hardswish(inplace=True))
        self.classifier = nn.Sequential(nn.Linear(48, 64), nn.Hardswish(inplace=True), nn.Dropout(0.2, inplace=True),
                                        nn.Linear(64, 10))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.stem(pixel_values)
        y = self.depthwise(self.expand(x))
        x = x + self.project(y * self.se(y))
        return self.classifier(torch.flatten(self.last(x).mean((2, 3), keepdim=True), 1))


# ------------------------------------------------------------------------------------- timm's blocks, copied


class BatchNormAct2d(nn.BatchNorm2d):
    """timm.layers.norm_act.BatchNormAct2d: a BatchNorm2d that runs its `drop` child, then its `act` child, after
    normalising (lowp knows it by this name and these children)."""

    def __init__(self, channels: int, act: bool = True):
        super().__init__(channels)
        self.drop = nn.Identity()
        self.act = nn.SiLU(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(super().forward(x)))


class SqueezeExcite(nn.Module):
    """timm.models._efficientnet_blocks.SqueezeExcite: x * sigmoid(conv_expand(silu(conv_reduce(mean(x)))))."""

    def __init__(self, channels: int, reduced: int):
        super().__init__()
        self.conv_reduce = nn.Conv2d(channels, reduced, 1)
        self.act1 = nn.SiLU(inplace=True)
        self.conv_expand = nn.Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.conv_expand(self.act1(self.conv_reduce(x.mean((2, 3), keepdim=True))))
        return x * gate.sigmoid()


class InvertedResidual(nn.Module):
    """timm's InvertedResidual (MBConv): 1x1 expand / BatchNormAct2d (SiLU), 3x3 depthwise / BatchNormAct2d (SiLU),
    squeeze-excitation, 1x1 project / BatchNormAct2d without activation, and the residual when shapes allow;
    expand=1 is timm's DepthwiseSeparableConv (no expansion conv)."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int = 1):
        super().__init__()
        mid = cin * expand
        self.conv_pw = nn.Conv2d(cin, mid, 1, bias=False) if expand > 1 else nn.Identity()
        self.bn1 = BatchNormAct2d(mid) if expand > 1 else nn.Identity()
        self.conv_dw = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
        self.bn2 = BatchNormAct2d(mid)
        self.se = SqueezeExcite(mid, max(1, cin // 4))
        self.conv_pwl = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn3 = BatchNormAct2d(cout, act=False)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn3(self.conv_pwl(self.se(self.bn2(self.conv_dw(self.bn1(self.conv_pw(x)))))))
        return x + y if self.residual else y


class TimmEfficientNet(nn.Module):
    """timm's efficientnet_b0 in small: stem conv / BatchNormAct2d, a depthwise-separable block and three
    inverted residuals (one strided), head conv / BatchNormAct2d, pooling, classifier. timm initialises its convs
    He-normal (fan_out), which keeps activations at unit scale through the blocks.
    pixel_values: (N, 3, H, W) float32 -> (N, 10) float32 logits."""

    def __init__(self):
        super().__init__()
        self.conv_stem = nn.Conv2d(3, 16, 3, 2, 1, bias=False)
        self.bn1 = BatchNormAct2d(16)
        self.blocks = nn.Sequential(InvertedResidual(16, 16, 1), InvertedResidual(16, 24, 4, stride=2),
                                    InvertedResidual(24, 24, 4), InvertedResidual(24, 32, 4, stride=2))
        self.conv_head = nn.Conv2d(32, 64, 1, bias=False)
        self.bn2 = BatchNormAct2d(64)
        self.classifier = nn.Linear(64, 10)
        for conv in self.modules():
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, mode="fan_out")

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.bn1(self.conv_stem(pixel_values)))
        return self.classifier(self.bn2(self.conv_head(x)).mean((2, 3)))


# ----------------------------------------------------------------------------- transformers, from tiny configs


def _hf(model_class: str, config_class: str, **config) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        import transformers

        return getattr(transformers, model_class)(getattr(transformers, config_class)(**config))

    return build


_TEXT = dict(vocab_size=VOCAB)
MODELS: dict[str, Zoo] = {
    "tv_resnet": Zoo(TvResNet, _image, _logits),
    "tv_mobilenet_v3": Zoo(TvMobileNetV3, _image, _logits),
    "timm_efficientnet": Zoo(TimmEfficientNet, _image, _logits),
    "resnet": Zoo(_hf("ResNetForImageClassification", "ResNetConfig", embedding_size=16, hidden_sizes=[16, 32],
                      depths=[1, 1], layer_type="basic", num_labels=10), _image, _logits),
    # layer_scale 1: at its default 1e-6 a block's branch adds nothing, and the residual stream hides any error
    "convnext": Zoo(_hf("ConvNextForImageClassification", "ConvNextConfig", hidden_sizes=[16, 32], depths=[1, 1],
                        num_stages=2, layer_scale_init_value=1.0, num_labels=10), _image, _logits),
    # hidden_dim: its top BatchNorm's width, which must equal its top conv's, round_filters(1280) = 1280 x width
    "efficientnet": Zoo(_hf("EfficientNetForImageClassification", "EfficientNetConfig", image_size=32,
                            width_coefficient=0.25, depth_coefficient=0.25, hidden_dim=320, num_labels=10),
                        _image, _logits),
    "vit": Zoo(_hf("ViTModel", "ViTConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                   intermediate_size=37, image_size=32, patch_size=8), _image, _hidden),
    "bert": Zoo(_hf("BertModel", "BertConfig", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                    intermediate_size=37, **_TEXT), _tokens, _hidden),
    "gpt2": Zoo(_hf("GPT2LMHeadModel", "GPT2Config", n_embd=32, n_layer=2, n_head=2, n_positions=32, bos_token_id=0,
                        eos_token_id=0, **_TEXT),
                _tokens, _logits),
    "t5": Zoo(_hf("T5ForConditionalGeneration", "T5Config", d_model=32, d_ff=37, d_kv=16, num_layers=2,
                  num_heads=2, **_TEXT), _seq2seq, _logits),
    "llama": Zoo(_hf("LlamaForCausalLM", "LlamaConfig", hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32, **_TEXT),
                 _tokens, _logits),
}


def build(name: str) -> nn.Module:
    """MODELS[name]'s model, seeded (the same weights every time), in eval mode, its BatchNorms as after training:
    torch's default affine (1, 0), as torchvision and timm initialise it (transformers' EfficientNet draws the scale
    from N(0, 0.02): its logits reach 1e-35), and the statistics of a few batches of the model's own inputs."""
    torch.manual_seed(0)
    zoo = MODELS[name]
    model = zoo.build()
    momentum = {}
    for bn in model.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            bn.reset_parameters()
            momentum[bn], bn.momentum = bn.momentum, None  # None: a cumulative average over the batches below
    with torch.no_grad():
        for seed in range(100, 104):
            model(**zoo.inputs(seed))
    for bn, value in momentum.items():
        bn.momentum = value
    return model.eval()
