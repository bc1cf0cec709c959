"""simcryo.io.pages: rows streamed through a memory map come back exact, and the mapping's
pages leave the resident set (RssFile of /proc/self/status) instead of piling up."""
import numpy as np
import pytest

from simcryo.io.pages import StreamedRows, mapping_of, release_pages


def _rss_file_mb():
    """Resident pages of file mappings, MB (RssShmem too: on a tmpfs they count there)."""
    kb = {}
    with open("/proc/self/status") as f:
        for line in f:
            name = line.split(":")[0]
            if name in ("RssFile", "RssShmem"):
                kb[name] = int(line.split()[1])
    if "RssFile" not in kb:
        pytest.skip("no RssFile in /proc/self/status")
    return sum(kb.values()) / 1024


def _stack(tmp_path, rows=1024, box=64):
    path = tmp_path / "stack.f32"
    data = np.random.default_rng(0).standard_normal((rows, box, box)).astype(np.float32)
    data.tofile(path)
    return path, data


def _read_all(stack, batch=64):
    total = 0.0
    for s in range(0, len(stack), batch):
        total += float(np.asarray(stack[s:s + batch]).sum())
    return total


def test_streamed_rows_equal_the_array_for_slices_and_index_arrays(tmp_path):
    path, data = _stack(tmp_path, rows=64, box=8)
    mm = np.memmap(path, dtype=np.float32, mode="r", shape=data.shape)
    rows = StreamedRows(mm, budget=1024)
    assert rows.shape == data.shape and len(rows) == 64 and rows.dtype == np.float32
    idx = np.array([5, 2, 63, 2])
    np.testing.assert_array_equal(rows[idx], data[idx])
    np.testing.assert_array_equal(rows[3:9], data[3:9])
    np.testing.assert_array_equal(rows[7], data[7])
    np.testing.assert_array_equal(rows[-1], data[-1])
    np.testing.assert_array_equal(rows[data[:, 0, 0] > 0], data[data[:, 0, 0] > 0])
    np.testing.assert_array_equal(rows[60:2:-3], data[60:2:-3])
    assert mapping_of(mm) is not None and mapping_of(data) is None
    release_pages(data)  # an array in memory: nothing to release


def test_streaming_a_64_mb_stack_leaves_its_pages_out_of_the_resident_set(tmp_path):
    path, data = _stack(tmp_path)          # 1024 x 64 x 64 float32 = 16 MiB
    path_big = tmp_path / "big.f32"
    np.concatenate([data] * 4).tofile(path_big)   # 64 MiB
    del data
    shape = (4096, 64, 64)
    plain = np.memmap(path_big, dtype=np.float32, mode="r", shape=shape)
    before = _rss_file_mb()
    expected = _read_all(plain)
    grown_plain = _rss_file_mb() - before
    release_pages(plain)
    del plain
    streamed = StreamedRows(np.memmap(path_big, dtype=np.float32, mode="r", shape=shape),
                            budget=4 << 20)
    before = _rss_file_mb()
    assert _read_all(streamed) == expected
    grown_streamed = _rss_file_mb() - before
    # measured: 64 MiB resident through the plain memmap, at most the 4 MiB budget streamed
    assert grown_plain >= 48
    assert grown_streamed <= 12


def test_rows_spread_over_the_file_release_the_pages_the_kernel_mapped_around_them(tmp_path):
    """A sample of rows spread over a stack maps far more than the rows (fault-around,
    large folios): StreamedRows counts the span its reads cover, not the bytes copied."""
    path, data = _stack(tmp_path)
    path_big = tmp_path / "big.f32"
    np.concatenate([data] * 4).tofile(path_big)   # 64 MiB
    del data
    shape = (4096, 64, 64)
    streamed = StreamedRows(np.memmap(path_big, dtype=np.float32, mode="r", shape=shape),
                            budget=4 << 20)
    before = _rss_file_mb()
    sample = streamed[np.linspace(0, 4095, 128).astype(np.int64)]   # 2 MiB copied
    assert sample.shape == (128, 64, 64)
    assert _rss_file_mb() - before <= 12
