"""The demo model build cache: one build per key, read back whole, rebuilt when asked or when
an entry is unreadable."""

from workers import demo_cache
from workers.demo_models import BuiltModel


def counting_builder():
    calls = []

    def build() -> BuiltModel:
        calls.append(1)
        return BuiltModel(name="tiny", artifact=b"onnx-bytes-%d" % len(calls),
                          signature={"inputs": ["x"]}, processing={"batch_size": 8},
                          metrics={"accuracy": 0.5}, provenance={"source": "test"})
    return build, calls


def test_a_second_call_reads_the_cached_build(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    build, calls = counting_builder()
    first, cached_first = demo_cache.built("tiny", build)
    second, cached_second = demo_cache.built("tiny", build)
    assert (cached_first, cached_second) == (False, True) and len(calls) == 1
    assert second == first
    assert (tmp_path / "kiln" / "demo-models").is_dir()


def test_rebuild_and_an_unreadable_entry_build_again(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    build, calls = counting_builder()
    demo_cache.built("tiny", build)
    rebuilt, cached = demo_cache.built("tiny", build, rebuild=True)
    assert not cached and rebuilt.artifact == b"onnx-bytes-2"
    [entry] = (tmp_path / "kiln" / "demo-models").glob("tiny-*.json")
    entry.write_text("{not json")
    again, cached = demo_cache.built("tiny", build)
    assert not cached and again.artifact == b"onnx-bytes-3" and len(calls) == 3
    assert demo_cache.built("tiny", build)[1], "the bad entry was overwritten"


def test_the_key_follows_the_name():
    assert demo_cache.key("digits") != demo_cache.key("minilm")
    assert demo_cache.key("digits") == demo_cache.key("digits")
