"""A tiny BERT for text-prompted detectors offline (tests and benchmarks/zoo.py): one layer of
bert-base's width (768, 12 heads, so mmdet's configs fit it) over a small vocabulary, written
with ``save_pretrained`` to a folder that mmdet's ``BertModel`` loads by name. Never a
download; words outside the vocabulary become ``[UNK]``."""
from pathlib import Path

WORDS = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '.', ',', 'circle', 'square', 'triangle',
         'a', 'red', 'shape', 'person', 'car', 'dog']


def write_tiny_bert(folder, words=WORDS, seed: int = 0) -> Path:
    """The tiny BERT in ``folder`` (made if missing); returns the folder."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer
    folder = Path(folder)
    if (folder / 'config.json').is_file() and (folder / 'vocab.txt').is_file():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (folder / 'vocab.txt').write_text('\n'.join(words) + '\n')
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = BertModel(BertConfig(vocab_size=len(words), hidden_size=768,
                                     num_hidden_layers=1, num_attention_heads=12,
                                     intermediate_size=256))
    model.save_pretrained(folder)
    BertTokenizer(str(folder / 'vocab.txt')).save_pretrained(folder)
    return folder
