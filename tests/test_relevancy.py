"""``relevancy``: Chefer et al.'s attention relevancy for DETR-style detectors (dense attention),
and its deformable-attention construction, on real mmdet configs (untrained, 320 px)."""
import numpy as np
import pytest
import torch

from mmdet_cam import DetCAM
from mmdet_cam.engine.attention import AttentionRecord, explicit_attention
from mmdet_cam.errors import UnsupportedModelError
from mmdet_cam.methods.relevancy import Relevancy, _head_mean

DENSE = ['detr/detr_r50_8xb2-150e_coco.py',
         'conditional_detr/conditional-detr_r50_8xb2-50e_coco.py',
         'dab_detr/dab-detr_r50_8xb2-50e_coco.py']
DEFORMABLE = ['deformable_detr/deformable-detr_r50_16xb2-50e_coco.py',
              pytest.param('dino/dino-4scale_r50_8xb2-12e_coco.py', marks=pytest.mark.slow),
              pytest.param('ddq/ddq-detr-4scale_r50_8xb2-12e_coco.py', marks=pytest.mark.slow)]


@pytest.mark.parametrize('batch_first', [False, True])
def test_explicit_attention_is_torchs_multihead_attention(batch_first):
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(16, 4, batch_first=batch_first).eval()
    query, key = torch.randn(5, 2, 16), torch.randn(7, 2, 16)
    if batch_first:
        query, key = query.transpose(0, 1), key.transpose(0, 1)
    padding = torch.zeros(2, 7, dtype=torch.bool)
    padding[1, 5:] = True
    mask = torch.zeros(5, 7, dtype=torch.bool)
    mask[0, 0] = True
    expected = mha(query, key, key, key_padding_mask=padding, attn_mask=mask)[0]
    output, probs = explicit_attention(mha, query, key, key, key_padding_mask=padding,
                                       attn_mask=mask)
    torch.testing.assert_close(output, expected, atol=1e-6, rtol=1e-5)
    assert probs.shape == (2, 4, 5, 7)
    assert torch.allclose(probs.sum(-1), torch.ones(2, 4, 5))
    assert (probs[1, :, :, 5:] == 0).all() and (probs[:, :, 0, 0] == 0).all()


def _chefer_full(records, grads, query):
    """Chefer et al.'s ``generate_ours`` (no LRP) with full matrices, as in their code."""
    def avg(record, grad):
        return (record.probs * grad).clamp(min=0)[0].mean(0)

    def residual(matrix):
        eye = torch.eye(matrix.shape[0])
        rest = matrix - eye
        return rest / rest.sum(-1, keepdim=True) + eye

    encoder = [avg(r, g) for r, g in zip(records, grads) if r.role == 'encoder']
    tokens = encoder[0].shape[0]
    queries = next(r.probs.shape[-2] for r in records if r.role != 'encoder')
    r_ii, r_qq, r_qi = torch.eye(tokens), torch.eye(queries), torch.zeros(queries, tokens)
    for cam in encoder:
        r_ii = r_ii + cam @ r_ii
    for record, grad in zip(records, grads):
        cam = avg(record, grad)
        if record.role == 'decoder_self':
            r_qq, r_qi = r_qq + cam @ r_qq, r_qi + cam @ r_qi
        elif record.role == 'decoder_cross':
            r_qi = r_qi + residual(r_qq).t() @ (cam @ residual(r_ii))
    return r_qi[query]


def test_dense_relevancy_is_chefers_rules_computed_row_by_row():
    """The box's row by vector products equals Chefer's full-matrix relevancy's row."""
    torch.manual_seed(0)
    tokens, queries, heads, query = 12, 6, 2, 4

    def record(role, rows, cols):
        probs = torch.rand(1, heads, rows, cols).softmax(-1)
        return AttentionRecord(role, role, probs), torch.randn(1, heads, rows, cols)

    pairs = [record('encoder', tokens, tokens), record('encoder', tokens, tokens)]
    for _ in range(3):
        pairs += [record('decoder_self', queries, queries),
                  record('decoder_cross', queries, tokens)]
    records, grads = zip(*pairs)
    grads = list(grads)
    only_box = torch.zeros(queries, tokens)  # the score reads one query's last cross-attention
    only_box[query] = 1
    grads[-1] = grads[-1].abs() * only_box
    ours = Relevancy().token_map(records, grads, tokens)
    torch.testing.assert_close(ours, _chefer_full(records, grads, query), atol=1e-5, rtol=1e-4)


def test_a_deformable_point_is_splatted_bilinearly_onto_its_level():
    """A point at a token's centre gives that token its weight; one halfway between two
    tokens of the second level gives each half (grid_sample's align_corners=False)."""
    shapes = torch.tensor([[2, 3], [1, 2]])  # level 0: 2 x 3 tokens, level 1: 1 x 2
    locations = torch.zeros(1, 1, 1, 2, 1, 2)
    locations[0, 0, 0, 0, 0] = torch.tensor([1.5 / 3, 0.5 / 2])  # centre of (row 0, col 1)
    locations[0, 0, 0, 1, 0] = torch.tensor([0.5, 0.5])  # between the two level-1 tokens
    probs = torch.tensor([0.25, 0.75]).reshape(1, 1, 1, 2, 1)
    record = AttentionRecord('decoder_cross', 'x', probs, locations, shapes)
    matrix = _head_mean(record, torch.ones_like(probs), tokens=8).to_dense()
    expected = torch.zeros(1, 8)
    expected[0, 1] = 0.25
    expected[0, 6] = expected[0, 7] = 0.375
    torch.testing.assert_close(matrix, expected)


@pytest.mark.parametrize('config', DENSE + DEFORMABLE)
def test_every_box_gets_its_own_relevancy_map(models, scene, config):
    result = DetCAM(models(config), method='relevancy', score_thr=0, topk=3)(scene)
    assert result.cams.shape == (3,) + scene.shape[:2]
    assert np.isfinite(result.cams).all() and result.cams.min() >= 0
    assert all(np.isclose(cam.max(), 1, atol=1e-5) for cam in result.cams)
    assert not np.allclose(result.cams[0], result.cams[1])


def test_a_detector_without_transformer_attention_is_refused(models, scene):
    with pytest.raises(UnsupportedModelError, match='DETR-style'):
        DetCAM(models('retinanet/retinanet_r50_fpn_1x_coco.py'), method='relevancy')(scene)
