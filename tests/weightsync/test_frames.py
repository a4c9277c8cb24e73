"""A version as broadcast frames: bucket arithmetic, flattening a state dict into byte buckets
and back, the header's round trip, and the checksum catching a damaged bucket."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load, save

from actors.weights import WeightsError, safetensors_signature, verify_blob
from learner.weights_retention import weights_announcement
from weightsync.frames import (
    HEADER_BYTES,
    FrameError,
    FrameKind,
    bucket_spans,
    bucket_views,
    decode_header,
    encode_header,
    flat_bytes,
)

RUN = "r1"


def state_blob() -> bytes:
    generator = torch.Generator().manual_seed(0)
    state = {
        "embed.weight": torch.randn(37, 8, generator=generator),
        "layer.bias": torch.randn(5, generator=generator).to(torch.bfloat16),
        "lm_head.weight": torch.randn(8, 37, generator=generator),
    }
    return save(state, metadata={"format": "pt"})


def test_bucket_spans_cover_the_bytes_in_full_buckets_and_one_short_one():
    assert bucket_spans(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert bucket_spans(8, 4) == [(0, 4), (4, 8)]
    assert bucket_spans(3, 4) == [(0, 3)]
    assert bucket_spans(0, 4) == []
    with pytest.raises(ValueError):
        bucket_spans(10, 0)


def test_bucket_views_share_the_blob_memory_and_are_contiguous():
    buffer = bytearray(range(10))
    views = bucket_views(flat_bytes(buffer), 4)
    assert [v.tolist() for v in views] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert all(v.is_contiguous() for v in views)
    views[1][0] = 99  # what a receiving collective does: write into the view
    assert buffer[4] == 99


@pytest.mark.parametrize("bucket_bytes", [1, 7, 64, 1 << 20])
def test_state_dict_through_buckets_and_back_is_the_same_blob_and_tensors(bucket_bytes):
    blob = state_blob()
    received = bytearray(len(blob))
    for sent, into in zip(
        bucket_views(flat_bytes(blob), bucket_bytes), bucket_views(flat_bytes(received), bucket_bytes), strict=True
    ):
        into.copy_(sent)  # one bucket's broadcast, without the network
    assert hashlib.sha256(received).hexdigest() == hashlib.sha256(blob).hexdigest()
    announcement = weights_announcement(RUN, 3, blob, 0.0)
    verify_blob(received, announcement, safetensors_signature(blob))
    before, after = load(blob), load(bytes(received))
    assert before.keys() == after.keys()
    for name in before:
        assert torch.equal(before[name], after[name]) and before[name].dtype == after[name].dtype


def test_a_damaged_bucket_fails_the_checksum_an_actor_checks_before_loading():
    blob = state_blob()
    announcement = weights_announcement(RUN, 3, blob, 0.0)
    received = bytearray(blob)
    received[-3] ^= 0x01
    with pytest.raises(WeightsError) as err:
        verify_blob(received, announcement, safetensors_signature(blob))
    assert err.value.reason == "sha256_mismatch"


def test_a_version_header_carries_the_announcement_and_a_close_header_none():
    announcement = weights_announcement(RUN, 7, state_blob(), 12.5)
    raw = encode_header(FrameKind.VERSION, announcement)
    assert len(raw) == HEADER_BYTES
    header = decode_header(raw, RUN)
    assert header.kind is FrameKind.VERSION and header.announcement == announcement
    close = decode_header(encode_header(FrameKind.CLOSE), RUN)
    assert close.kind is FrameKind.CLOSE and close.announcement is None
    with pytest.raises(ValueError):
        encode_header(FrameKind.CLOSE, announcement)


def test_a_header_from_another_run_or_layout_is_refused():
    raw = bytearray(encode_header(FrameKind.VERSION, weights_announcement(RUN, 1, b"x" * 16, 0.0)))
    with pytest.raises(FrameError, match="announcement refused"):
        decode_header(raw, "other-run")
    bad_magic = bytearray(raw)
    bad_magic[0:4] = b"XXXX"
    with pytest.raises(FrameError, match="magic"):
        decode_header(bad_magic, RUN)
    newer = bytearray(raw)
    newer[4] = 2  # frame schema version 2
    with pytest.raises(FrameError, match="schema version"):
        decode_header(newer, RUN)
    with pytest.raises(FrameError, match="bytes"):
        decode_header(raw[:-1], RUN)
