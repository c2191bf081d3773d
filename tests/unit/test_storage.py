"""A joined file (`Storage.put_joined`): a head and stored pieces that read as one file."""

import hashlib
import io

import pytest

from app.storage import JOINED, Storage


@pytest.fixture
def joined(tmp_path):
    pieces = [b"1,a\n2,b\n", b"", b"3,c\n" * 1000, b"4,d\n"]  # an empty piece too
    uris = []
    for i, data in enumerate(pieces):
        (tmp_path / f"{i}.csv").write_bytes(data)
        uris.append(f"file://{tmp_path}/{i}.csv")
    whole = b"id,x\n" + b"".join(pieces)
    uri = f"file://{tmp_path}/out.csv{JOINED}"
    size, sha256 = Storage.put_joined(uri, b"id,x\n", uris)
    return uri, whole, size, sha256, tmp_path


def test_it_reads_as_the_whole_with_its_size_and_hash(joined):
    uri, whole, size, sha256, _ = joined
    assert (size, sha256) == (len(whole), hashlib.sha256(whole).hexdigest())
    assert Storage.size(uri) == len(whole)
    assert Storage.read_bytes(uri) == whole
    with Storage.open(uri) as handle:
        assert b"".join(iter(lambda: handle.read(7), b"")) == whole


@pytest.mark.parametrize("offset", [0, 3, 5, 12, 13, 2000, 4012, 4013, 4016, 4017, 9999])
def test_a_seek_lands_anywhere_across_the_head_and_pieces(joined, offset):
    uri, whole, *_ = joined
    with Storage.open(uri) as handle:
        handle.seek(offset)
        assert handle.tell() == offset
        assert handle.read(10) == whole[offset:offset + 10]
        assert handle.read() == whole[offset + 10:]
        handle.seek(-4, io.SEEK_END)
        assert handle.read() == whole[-4:]


def test_lines_read_as_in_the_whole(joined):
    uri, whole, *_ = joined
    with Storage.open(uri) as handle:
        assert list(handle) == whole.splitlines(keepends=True)


def test_a_piece_cut_short_is_an_error_not_a_silent_gap(joined):
    uri, _, _, _, folder = joined
    (folder / "2.csv").write_bytes(b"3,c\n" * 10)
    with Storage.open(uri) as handle, pytest.raises(OSError, match="shorter than when"):
        handle.read()


def test_removing_it_leaves_its_pieces_to_their_owner(joined):
    uri, _, _, _, folder = joined
    Storage.remove(uri)
    assert not Storage.exists(uri)
    assert sorted(p.name for p in folder.iterdir()) == ["0.csv", "1.csv", "2.csv", "3.csv"]
