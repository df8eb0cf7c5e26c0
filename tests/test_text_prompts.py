"""Text-prompted detectors (Grounding DINO, MM-Grounding-DINO, GLIP), built untrained from
mmdet's configs with a tiny BERT written here (never a download): per-box maps, the prompt as an
input, and each box's attribution per token, checked against finite differences."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from mmdet_cam import DetCAM, build_detector
from mmdet_cam.boxes import box_iou
from mmdet_cam.engine import session as session_module
from mmdet_cam.errors import BadInputError
from mmdet_cam.model.prompts import use_language_model
from mmdet_cam.patching import swapped

from conftest import REPO, make_scene, small_config
from tiny_language_model import write_tiny_bert

GROUNDING_DINO = 'grounding_dino/grounding_dino_r50_scratch_8xb2_1x_coco.py'
CONFIGS = [
    GROUNDING_DINO,
    pytest.param('grounding_dino/grounding_dino_swin-t_finetune_16xb2_1x_coco.py',
                 marks=pytest.mark.slow),
    pytest.param('mm_grounding_dino/grounding_dino_swin-t_pretrain_obj365.py',
                 marks=pytest.mark.slow),
    pytest.param('glip/glip_atss_swin-t_a_fpn_dyhead_pretrain_obj365.py', marks=pytest.mark.slow),
]
PROMPT = 'circle . square . triangle'
os.environ.setdefault('HF_HUB_OFFLINE', '1')  # no hub lookups for the local language model


@pytest.fixture(scope='session')
def tiny_bert(tmp_path_factory):
    return write_tiny_bert(tmp_path_factory.mktemp('tiny_bert'))


@pytest.fixture(scope='session')
def text_models(tiny_bert):
    cache = {}

    def build(name):
        if name not in cache:
            cfg = small_config(name)
            use_language_model(cfg, tiny_bert)
            torch.manual_seed(0)
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                cache[name] = build_detector(cfg)
        return cache[name]
    return build


@pytest.mark.parametrize('config', CONFIGS)
def test_every_box_gets_its_own_map_and_token_attributions(text_models, config):
    scene = make_scene()
    result = DetCAM(text_models(config), method='hirescam', score_thr=0, topk=3,
                    texts=PROMPT)(scene)
    assert len(result) == 3
    assert result.cams.shape == (3,) + scene.shape[:2] and np.isfinite(result.cams).all()
    assert not np.allclose(result.cams[0], result.cams[1])
    assert result.tokens[:3] == ['[CLS]', 'circle', '.'] and 'triangle' in result.tokens
    attributions = result.token_attributions
    assert attributions.shape == (3, len(result.tokens)) and attributions.dtype == np.float32
    assert np.isfinite(attributions).all() and np.abs(attributions).max() > 0
    assert not np.allclose(attributions[0], attributions[1])
    assert set(result.detections.labels.tolist()) <= {0, 1, 2}  # the prompt's entities


def test_relevancy_reads_the_image_attention_of_a_text_prompted_detector(text_models):
    """Grounding DINO's deformable encoder and decoder attention over image tokens (its text
    layers attend to words, not positions, and are left out)."""
    scene = make_scene()
    result = DetCAM(text_models(GROUNDING_DINO), method='relevancy', score_thr=0, topk=2,
                    texts=PROMPT)(scene)
    assert result.cams.shape == (2,) + scene.shape[:2] and np.isfinite(result.cams).all()
    assert not np.allclose(result.cams[0], result.cams[1])


def test_relevancy_attributes_each_box_to_the_prompts_tokens_as_gradient_methods_do(
        text_models):
    """Relevancy's token attributions are the gradient methods' (gradient x embedding, from
    the same backward as its attention gradients); with one entity per chunk of the prompt
    (separate passes of the language model), a box's own entity is all that can matter."""
    model, scene = text_models(GROUNDING_DINO), make_scene()
    options = dict(score_thr=0, topk=3, texts=PROMPT)
    relevancy = DetCAM(model, method='relevancy', **options)(scene)
    gradient = DetCAM(model, method='hirescam', **options)(scene)
    assert relevancy.tokens == gradient.tokens
    assert relevancy.token_attributions.shape == (3, len(relevancy.tokens))
    np.testing.assert_allclose(relevancy.token_attributions, gradient.token_attributions,
                               rtol=1e-4, atol=1e-7)
    with swapped(model, 'test_cfg', dict(model.test_cfg, chunked_size=1)):
        split = _TopOfEachEntity(model, method='relevancy', score_thr=0,
                                 texts=['circle', 'square'])(scene)
    assert split.detections.labels.tolist() == [0, 1]
    entity = np.cumsum([token == '[CLS]' for token in split.tokens]) - 1  # token -> entity
    for label, attributions in zip([0, 1], split.token_attributions):
        assert np.abs(attributions[entity == label]).sum() > 0
        assert not attributions[entity != label].any()


class _FixedChoices(TorchFunctionMode):
    """While active, ``torch.topk`` (and ``Tensor.topk``) returns the indices it returned in
    the first run, with the values gathered at them: discrete choices held fixed, as autograd
    holds them when it differentiates (DINO-style detectors pick their queries by a top-k over
    the encoder's proposals)."""

    def __init__(self):
        super().__init__()
        self.recorded, self.call = [], 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func not in (torch.topk, torch.Tensor.topk):
            return func(*args, **kwargs)
        values, indices = func(*args, **kwargs)
        if self.call < len(self.recorded):
            dim = kwargs.get('dim', args[2] if len(args) > 2 else -1)
            indices = self.recorded[self.call]
            values = args[0].gather(dim, indices)
        else:
            self.recorded.append(indices)
        self.call += 1
        return values, indices


def _score_with_scaled_token(cam, scene, detection, token: int, factor: float, choices):
    """The reported score of ``detection``'s box and label when token ``token``'s embedding is
    multiplied by ``factor``, with the first run's discrete choices (matched among the
    detections by IoU > 0.99)."""
    language_model = cam.model.language_model.language_backbone.body.model
    word_embeddings = language_model.embeddings.word_embeddings

    def scale(module, inputs, output):
        output = output.clone()
        output[:, token] *= factor
        return output
    handle = word_embeddings.register_forward_hook(scale)
    try:
        choices.call = 0
        with choices:
            pred = cam.detect(scene)
    finally:
        handle.remove()
    same = pred.labels == detection.labels[0]
    ious = box_iou(pred.bboxes[same].numpy(), detection.bboxes[0].tolist())
    assert ious.max() > 0.99, 'the perturbed run lost the box'
    return float(pred.scores[same][int(ious.argmax())])


@pytest.mark.slow
def test_a_tokens_attribution_is_the_derivative_of_the_score_along_its_embedding(text_models):
    """Gradient x input of token t is d score / d h at h = 0 for embedding_t * (1 + h): checked
    by central differences for every token of the prompt: words, separators, [CLS] and [SEP]
    alike, which act through the text encoder and the fusion layers as the model makes them
    act (no special case). The query selection's top-k is held at the unperturbed run's
    choice, as autograd holds it."""
    scene = make_scene()
    cam = DetCAM(text_models(GROUNDING_DINO), method='hirescam', score_thr=0, topk=1,
                 texts=PROMPT)
    result = cam(scene)
    choices = _FixedChoices()
    choices.call = 0
    with choices:
        cam.detect(scene)  # records the unperturbed run's choices
    step = 1e-3  # float32: smaller steps drown in rounding, larger ones in curvature
    for token, name in enumerate(result.tokens):
        up, down = (_score_with_scaled_token(cam, scene, result.detections, token, 1 + h,
                                             choices) for h in (step, -step))
        assert (up - down) / (2 * step) == pytest.approx(
            float(result.token_attributions[0, token]), rel=0.05, abs=5e-5), name


def test_the_prompt_is_per_explainer_or_per_call_and_defaults_to_the_class_names(text_models):
    model = text_models(GROUNDING_DINO)
    scene = make_scene()
    cam = DetCAM(model, method='hirescam', score_thr=0, topk=2)
    assert cam.class_names == list(model.dataset_meta['classes'])  # COCO's 80, as mmdet
    result = cam(scene, texts=['square', 'circle'])
    assert result.tokens[1:4] == ['square', '.', 'circle']
    assert set(result.detections.labels.tolist()) <= {0, 1}
    assert cam.class_names == list(model.dataset_meta['classes'])  # the call changed nothing
    assert DetCAM(model, texts='dog . car', classes=['car']).class_ids == [1]


def test_the_text_side_questions_take_the_prompts_entities(text_models):
    """"Why 'triangle' and not what it reported?" and "what did the model think of this box
    as a circle?": the entity names work where class names do, with token attributions."""
    model = text_models(GROUNDING_DINO)
    scene = make_scene()
    cam = DetCAM(model, method='hirescam', score_thr=0, topk=2, texts=PROMPT)
    other = cam(scene, explain_class='triangle')
    assert other.detections.labels.tolist() == [2, 2]
    assert 'reported_labels' in other.detections
    assert other.token_attributions.shape == (2, len(other.tokens))
    versus = cam(scene, explain_class='triangle', contrast=True)
    assert versus.detections.versus_labels.tolist() == [2, 2]
    named = cam(scene, boxes=[[40, 30, 140, 110]], labels=['circle'])
    assert named.detections.labels.tolist() == [0] and float(named.detections.ious[0]) > 0
    assert np.isfinite(named.cams).all() and named.cams.max() > 0


class _TopOfEachEntity(DetCAM):
    """Explains the top detection of each entity of the prompt."""

    def select(self, pred):
        index = super().select(pred)
        labels = pred.labels[index].tolist()
        return index[[labels.index(label) for label in sorted(set(labels))]]


def test_a_prompt_cut_into_chunks_gives_the_maps_of_keeping_every_chunks_graph(text_models,
                                                                               monkeypatch):
    """A long prompt runs in chunks (LVIS: 1203 classes in chunks of 40); only the chunks of
    the explained boxes keep their graph, which must change no map and no attribution, and a
    box's tokens are those of its own chunk."""
    model = text_models(GROUNDING_DINO)
    scene = make_scene()
    names = ['circle', 'square', 'triangle', 'disc', 'star']
    with swapped(model, 'test_cfg', dict(model.test_cfg, chunked_size=2)):
        cam = _TopOfEachEntity(model, method='hirescam', score_thr=0, texts=names)
        chunked = cam(scene)
        named = cam(scene, boxes=[[40, 30, 140, 110]], labels=['star'])
        monkeypatch.setattr(session_module, 'chunk_count', lambda *args: 1)  # every graph kept
        reference = cam(scene)
    labels = chunked.detections.labels.tolist()
    assert {label // 2 for label in labels} == {0, 1, 2}  # boxes of every chunk
    assert labels == reference.detections.labels.tolist()
    assert np.allclose(chunked.cams, reference.cams, atol=1e-6)
    assert np.allclose(chunked.token_attributions, reference.token_attributions, atol=1e-7)
    starts = [i for i, token in enumerate(chunked.tokens) if token == '[CLS]'] + \
        [len(chunked.tokens)]
    assert len(starts) == 4  # three chunks
    for label, attributions in zip(labels, chunked.token_attributions):
        own = slice(starts[label // 2], starts[label // 2 + 1])
        assert np.abs(attributions[own]).max() > 0
        assert not np.delete(attributions, np.r_[own]).any()
    assert named.detections.labels.tolist() == [4]
    assert np.isfinite(named.cams).all() and named.cams.max() > 0


def test_a_prompt_where_none_is_taken_or_an_empty_one_is_a_one_line_error(models, text_models):
    with pytest.raises(BadInputError, match='takes no text prompt'):
        DetCAM(models('retinanet/retinanet_r50_fpn_1x_coco.py'), texts='cat . dog')
    with pytest.raises(BadInputError, match='names no entity'):
        DetCAM(text_models(GROUNDING_DINO), texts=' . ')
    with pytest.raises(BadInputError, match='not a text-prompted detector'):
        use_language_model(small_config('retinanet/retinanet_r50_fpn_1x_coco.py'), '/tmp')


@pytest.mark.slow
def test_cli_writes_tokens_and_attributions_and_the_report_shades_the_prompt(tiny_bert, tmp_path,
                                                                             browser):
    import cv2
    image = tmp_path / 'scene.jpg'
    cv2.imwrite(str(image), make_scene())
    cfg = small_config(GROUNDING_DINO)  # the tests' 320 px pipeline, as a config file
    cfg.dump(str(tmp_path / 'grounding_dino.py'))
    out = subprocess.run(
        [sys.executable, str(REPO / 'tools' / 'demo_gradcam.py'),
         str(tmp_path / 'grounding_dino.py'), 'none', str(image), '--texts', PROMPT,
         '--topk', '2', '--score-thr', '0',
         '--method', 'hirescam', '--out-dir', str(tmp_path / 'out'), '--html',
         '--language-model', str(tiny_bert)],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, HF_HUB_OFFLINE='1'))
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / 'out' / 'scene.json').read_text())
    assert summary['texts'] == PROMPT and summary['tokens'][1] == 'circle'
    for row in summary['detections']:
        assert row['class_name'] in ('circle', 'square', 'triangle')
        assert len(row['token_attributions']) == len(summary['tokens'])
    lines = [line for line in out.stdout.splitlines() if line.startswith('  0 ')]
    assert lines and any(word in lines[0] for word in ('circle', 'square', 'triangle', '.'))

    # the report: the prompt under the image, each token shaded by the selected box's
    # attribution (green raised its value, red lowered it), nothing shaded for all boxes
    page = browser.new_page()
    page.goto((tmp_path / 'out' / 'scene.html').as_uri())
    tokens = page.locator('[data-token]')
    assert tokens.count() == len(summary['tokens'])
    for k, row in enumerate(summary['detections']):
        page.locator(f'tr[data-row="{k}"]').hover()
        shown = [float(tokens.nth(t).get_attribute('data-attribution'))
                 for t in range(tokens.count())]
        np.testing.assert_allclose(shown, row['token_attributions'], rtol=1e-6)
        strongest = int(np.argmax(np.abs(shown)))
        colour = tokens.nth(strongest).evaluate('el => getComputedStyle(el).backgroundColor')
        red, green = [int(v) for v in colour[colour.index('(') + 1:].split(',')[:2]]
        assert (green > red) == (shown[strongest] > 0), colour
    page.locator('[data-role=fused]').check()
    assert tokens.nth(0).get_attribute('data-attribution') == ''
    page.close()
