"""jaxdet.ops.anchors: counts, hand-checked values and the order contract."""

import math

import numpy as np

from jaxdet.ops import anchors as A

STRIDES = (8, 16, 32, 64, 128)


def loop_reference(image_size, strides, base_scale, spo, ratios, offset):
  """Anchors built with explicit loops in the documented order."""
  out = []
  for s in strides:
    h = math.ceil(image_size[0] / s)
    w = math.ceil(image_size[1] / s)
    for y in range(h):
      for x in range(w):
        cx, cy = (x + offset) * s, (y + offset) * s
        for r in ratios:
          for i in range(spo):
            size = s * base_scale * 2 ** (i / spo)
            aw, ah = size / math.sqrt(r), size * math.sqrt(r)
            out.append([cx - aw / 2, cy - ah / 2, cx + aw / 2, cy + ah / 2])
  return np.array(out)


def test_feature_sizes_match_stride2_conv_chain():
  for size in [(100, 130), (256, 256), (1344, 1344), (33, 7)]:
    # 3x3, stride 2, padding 1: out = floor((n + 2 - 3) / 2) + 1. Strides 8..128 are
    # the outputs of stride-2 stages 3..7.
    chain = []
    h, w = size
    for _ in range(7):
      h, w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
      chain.append((h, w))
    got = A.feature_sizes(size, STRIDES)
    assert got == chain[2:], (size, got, chain)
  assert A.feature_sizes((100, 130), STRIDES) == [(13, 17), (7, 9), (4, 5), (2, 3), (1, 2)]
  assert A.feature_sizes(64, (8,)) == [(8, 8)]


def test_counts():
  anchors = A.generate_anchors((100, 130))
  assert anchors.dtype == np.float32
  assert anchors.shape == (9 * (13 * 17 + 7 * 9 + 4 * 5 + 2 * 3 + 1 * 2), 4)
  per_level = A.num_anchors_per_level((100, 130), STRIDES, 9)
  assert per_level == [9 * 221, 9 * 63, 9 * 20, 9 * 6, 9 * 2]
  assert sum(per_level) == anchors.shape[0]
  assert A.num_anchors_per_location(3, (0.5, 1.0, 2.0)) == 9
  assert A.generate_anchors((64, 64), strides=(8,), scales_per_octave=1,
                            ratios=(1.0,)).shape == (64, 4)


def test_first_anchors_level0_by_hand():
  anchors = A.generate_anchors((64, 64))
  r2 = math.sqrt(2.0)
  s1 = 2 ** (1 / 3)
  # Location (0, 0) of stride 8 is centred at (4, 4); base size 32.
  # k=0: ratio 0.5 (h/w), scale 1: w = 32 * sqrt 2, h = 32 / sqrt 2.
  np.testing.assert_allclose(anchors[0], [4 - 16 * r2, 4 - 8 * r2, 4 + 16 * r2, 4 + 8 * r2],
                             rtol=1e-6)
  # k=1: ratio 0.5, scale 2^(1/3).
  np.testing.assert_allclose(
      anchors[1], [4 - 16 * r2 * s1, 4 - 8 * r2 * s1, 4 + 16 * r2 * s1, 4 + 8 * r2 * s1],
      rtol=1e-6)
  # k=3: ratio 1, scale 1: a 32 x 32 square.
  np.testing.assert_allclose(anchors[3], [-12, -12, 20, 20], rtol=1e-6)
  # k=6: ratio 2, scale 1: tall box.
  np.testing.assert_allclose(anchors[6], [4 - 8 * r2, 4 - 16 * r2, 4 + 8 * r2, 4 + 16 * r2],
                             rtol=1e-6)
  # Next location is x + 1 (row-major): centre (12, 4).
  np.testing.assert_allclose(anchors[9 + 3], [-4, -12, 28, 20], rtol=1e-6)


def test_order_contract_against_loops():
  size = (100, 130)
  got = A.generate_anchors(size)
  want = loop_reference(size, STRIDES, 4.0, 3, (0.5, 1.0, 2.0), 0.5)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
  # Flat index of (level 1, y 2, x 3, k 4) computed from the contract.
  h0, w0 = 13, 17
  _, w1 = 7, 9
  idx = 9 * h0 * w0 + (2 * w1 + 3) * 9 + 4
  box = got[idx]
  np.testing.assert_allclose([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2],
                             [(3 + 0.5) * 16, (2 + 0.5) * 16], rtol=1e-6)
  # k=4 is ratio 1 (second ratio), scale 2^(1/3): a square of side 64 * 2^(1/3).
  np.testing.assert_allclose(box[2:] - box[:2], [64 * 2 ** (1 / 3)] * 2, rtol=1e-6)


def test_other_settings():
  size = (40, 24)
  got = A.generate_anchors(size, strides=(4, 8), octave_base_scale=8.0,
                           scales_per_octave=2, ratios=(0.25, 1.0), center_offset=0.0)
  want = loop_reference(size, (4, 8), 8.0, 2, (0.25, 1.0), 0.0)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-4)
  # center_offset = 0: first location centred at the origin.
  np.testing.assert_allclose((got[0, :2] + got[0, 2:]) / 2, [0, 0], atol=1e-6)
