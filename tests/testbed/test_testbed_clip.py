"""The testbed CLIP architectures: open_clip model configs whose image towers (through open_clip's
timm-tower hook) are an open_clip ViT with a BatchNorm conv stem and a small CNN, saved and loaded
by open_clip's local-file path, with dense features whose mean is the image embedding."""

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import VisionTransformer
from safetensors.torch import save_file

from clipdistill.modeling.clip import vit as vit_helpers
from clipdistill.testbed.towers import ConvStem
from clipdistill.modeling.clip.dense import dense_features
from clipdistill.modeling.clip.text import PROMPT_TEMPLATES
from clipdistill.modeling.teacher import CLIPTeacher

unwrap_tower = vit_helpers.unwrap_tower
VIT_NAME = "ViT-8-testbed"  # the alternative tower (the shipped teacher is CNN-4-testbed)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    model = open_clip.create_model(VIT_NAME, pretrained=None)
    model.eval()
    # non-trivial BatchNorm statistics, as after training
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    path = tmp_path_factory.mktemp("tbclip") / "w.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model, str(path)


def test_architecture(weights):
    model, _ = weights
    vit = unwrap_tower(model.visual)
    assert isinstance(vit, VisionTransformer) and isinstance(vit.conv1, ConvStem)
    # OpenAI CLIP's layout: class token, ln_pre, ln_post, proj
    assert vit.pool_type == "tok" and tuple(vit.grid_size) == (8, 8)
    assert vit.class_embedding.shape == (128,) and isinstance(vit.ln_pre, torch.nn.LayerNorm)
    assert vit.proj.shape == (128, 128)
    assert unwrap_tower(vit) is vit  # a plain tower is returned as is
    assert open_clip.get_tokenizer(VIT_NAME).context_length == 32
    assert PROMPT_TEMPLATES["caption"][0]("orange dotted patch") == "an orange dotted patch."
    assert PROMPT_TEMPLATES["caption"][0]("empty background") == "an empty background."


def test_loads_through_the_teacher_with_class_token_and_dense_tokens(weights):
    model, path = weights
    teacher = CLIPTeacher(
        model_name=VIT_NAME,
        weights=path,
        image_size=64,
        dense_image_size=64,
        templates="caption",
        dense_method="tokens",
    )
    x = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 255
    mean, std = teacher.pixel_mean, teacher.pixel_std
    with torch.no_grad():
        ref = F.normalize(model.encode_image((x - mean) / std), dim=-1)
    g = teacher.encode_image(x)
    torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-5)  # same weights, same network
    dense = teacher.encode_image_dense(x)
    assert dense.shape == (3, 128, 8, 8) and teacher.patch_size == 8
    # the dense method "tokens": the last block unchanged, the patch tokens through ln_post and
    # proj; the class token, through the same, is the image embedding
    vit = unwrap_tower(model.visual)
    with torch.no_grad():
        tokens, _ = vit_helpers.vit_tokens(vit, (x - mean) / std)
        out = vit.ln_post(vit_helpers.run_blocks(vit, tokens)) @ vit.proj
        raw = dense_features(model.visual, (x - mean) / std, "tokens")
    per_token = out[:, 1:]
    torch.testing.assert_close(raw.flatten(2).transpose(1, 2), per_token, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(F.normalize(per_token, dim=-1), dense.flatten(2).transpose(1, 2))
    torch.testing.assert_close(F.normalize(out[:, 0], dim=-1), g, rtol=1e-5, atol=1e-5)
    # MaskCLIP's value path differs from the tokens (the last attention matters)
    with torch.no_grad():
        value = dense_features(model.visual, (x - mean) / std, "value_only")
    assert (value - raw).abs().max() > 1e-3
    # a larger input: interpolated positional embeddings, a finer grid
    assert teacher.encode_image_dense(x, size=128).shape == (3, 128, 16, 16)


def test_cnn_tower_pools_its_dense_embeddings_by_attention(tmp_path):
    """CNN-4-testbed: a per-location embedding at stride 4 whose normalised values, weighted by a
    softmax of the tower's learnt score, are the image embedding; the teacher reads them with the
    dense method "tokens", the ViT-only methods are refused with the fix named."""
    from clipdistill.testbed.towers import DenseEmbeddingCNN

    torch.manual_seed(0)
    model = open_clip.create_model("CNN-4-testbed", pretrained=None).eval()
    for m in model.modules():  # non-trivial BatchNorm statistics, as after training
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    tower = unwrap_tower(model.visual)
    assert isinstance(tower, DenseEmbeddingCNN) and tower.pool == "attention"
    path = str(tmp_path / "cnn.safetensors")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    teacher = CLIPTeacher(
        model_name="CNN-4-testbed",
        weights=path,
        image_size=64,
        dense_image_size=64,
        templates="caption",
        dense_method="tokens",
    )
    assert teacher.patch_size == 4
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(2)) * 255
    xn = (x - teacher.pixel_mean) / teacher.pixel_std
    with torch.no_grad():
        raw = dense_features(model.visual, xn, "tokens")  # [2, 128, 16, 16]
        ref = model.encode_image(xn)
        score = tower.score(tower.blocks(tower.context(torch.relu(tower.stem(xn)))))
    assert raw.shape == (2, 128, 16, 16)
    weights = torch.softmax(score.flatten(1), dim=1)  # [2, 256]
    pooled = (F.normalize(raw.flatten(2), dim=1) * weights[:, None]).sum(2)
    torch.testing.assert_close(pooled, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(F.normalize(raw.mean(dim=(2, 3)), dim=-1), F.normalize(ref, dim=-1))
    torch.testing.assert_close(teacher.encode_image(x), F.normalize(ref, dim=-1))
    dense = teacher.encode_image_dense(x)
    torch.testing.assert_close(dense, F.normalize(raw, dim=1))
    # fully convolutional: a larger input gives a finer grid of the same features' kind
    assert teacher.encode_image_dense(x, size=96).shape == (2, 128, 24, 24)
    with pytest.raises(NotImplementedError, match="use 'tokens'"):
        dense_features(model.visual, xn, "maskclip")
    # the mean-pooled variant: the image embedding is the mean of the per-location embeddings
    mean_tower = DenseEmbeddingCNN(image_size=64, output_dim=16, pool="mean").eval()
    with torch.no_grad():
        torch.testing.assert_close(
            mean_tower(xn), mean_tower.dense_embeddings(xn).mean(dim=(2, 3)), rtol=1e-5, atol=1e-6
        )
    with pytest.raises(ValueError, match="pool 'max'"):
        DenseEmbeddingCNN(image_size=64, output_dim=16, pool="max")
