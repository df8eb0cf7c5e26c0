"""The house holds its shape (docs/how_it_works.md#the-house): data flows one way, the shells
never ask which kind of method they hold, and only the request reads what a target records."""
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / 'mmdet_cam'
SHELLS = ['api.py', 'cli.py', 'runner/hooks.py']


@pytest.mark.parametrize('shell', SHELLS)
def test_the_api_cli_and_hook_never_branch_on_the_method_kind(shell):
    source = (PACKAGE / shell).read_text()
    branches = re.findall(r'.*(?:MethodKind\.\w|\.kind\s*(?:is|==|!=|in)\b|\.kind\.\w'
                          r'|reruns_detector).*', source)
    assert not branches


def test_the_engine_never_imports_the_methods_or_the_outputs():
    for path in (PACKAGE / 'engine').glob('*.py'):
        imports = re.findall(r'^from \.\.(\w+)', path.read_text(), re.M)
        assert not {'methods', 'outputs', 'runner', 'api', 'cli'} & set(imports), path.name


def test_only_the_request_reads_what_a_target_records():
    readers = [path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob('*.py')
               if re.search(r"getattr\([^)]*'reads_masks'", path.read_text())]
    assert readers == ['engine/request.py']
