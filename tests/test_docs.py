"""The README and docs/ hold together: every relative link (and its #anchor) resolves, and the
README stays a front door of a few screens."""
import re
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
PAGES = [REPO / 'README.md', REPO / 'CHANGELOG.md'] + sorted((REPO / 'docs').glob('*.md'))
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)\)')


def anchors(page: Path) -> set:
    """GitHub's anchors of a page's headings: lower case, punctuation dropped, spaces -> '-'."""
    headings = re.findall(r'^#+\s+(.*)$', page.read_text(encoding='utf-8'), re.M)
    return {re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')
            for heading in headings}


@pytest.mark.parametrize('page', PAGES, ids=lambda page: page.name)
def test_every_relative_link_resolves(page):
    broken = []
    for target in LINK.findall(page.read_text(encoding='utf-8')):
        if re.match(r'[a-z]+://|mailto:', target):
            continue
        path, _, anchor = target.partition('#')
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists():
            broken.append(f'{target}: no such file')
        elif anchor and linked.suffix == '.md' and anchor not in anchors(linked):
            broken.append(f'{target}: no such heading')
    assert not broken, f'{page.name}: {broken}'


def test_the_readme_is_a_front_door():
    readme = (REPO / 'README.md').read_text(encoding='utf-8')
    assert len(readme.splitlines()) <= 220
    for page in ('docs/cli.md', 'docs/methods.md', 'docs/workflow.md', 'docs/benchmarks.md',
                 'docs/how_it_works.md', 'CHANGELOG.md'):
        assert f']({page}' in readme, page
