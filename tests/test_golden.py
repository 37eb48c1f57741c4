"""Golden hashes of a small digits chain (squeeze -> recover -> relabel -> prune -> train) through the CLI.

Recorded before the phases moved to typed configs (issue 10) with the code of commit de61911; a
change that keeps behaviour keeps every hash. A change that means to move them (a new default, a
different recipe) updates the constants here in the same commit and says why.
"""

import pytest

from golden_chain import run_chain

GOLDEN = {
    "teacher": "010b696159ed0a557ffee6210c3881a5ffd8a213c5b7e4cb31edc2132cc96a2f",
    "images": "614efbfdcf7bfcb0138161b98905a209c4ab4c74dd536a9f042a353d13919c1f",
    "store": "5cb515b93350db24135b0b3efc33880e6f4f37c4d41b4129f7dc72cd2dc17d90",
    "pruned": "18d96ba028c9e043cda7114e37918a9d9bab5d8db6e729b1d3d73e76bede3be0",
    "student": "3b6a722650ac8919dbf8653263e9f5fab07c4b9b6e7be9f50af1da93679e787d",
}


@pytest.fixture(scope="module")
def hashes(tmp_path_factory):
    return run_chain(str(tmp_path_factory.mktemp("golden")))


@pytest.mark.parametrize("what", sorted(GOLDEN))
def test_chain_output_is_unchanged(hashes, what):
    assert hashes[what] == GOLDEN[what], f"{what} changed"
