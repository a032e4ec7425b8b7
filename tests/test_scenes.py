"""SceneTiling (mmlc.streaming.scenes): depth scores, offline and online boundaries, F1, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmlc.data import shapeworld as sw
from mmlc.errors import ConfigError
from mmlc.streaming import scenes as S


def piecewise(n: int, cuts: list[int], d: int = 32, noise: float = 0.05, seed: int = 0,
              scale: list[float] | None = None) -> np.ndarray:
    """Features constant within each scene (a random direction) plus Gaussian noise.

    ``scale[k]`` (0..1) blends scene k + 1's direction with scene k's: small = a weak cut.
    """
    rng = np.random.default_rng(seed)
    edges = [0, *cuts, n]
    base = rng.normal(size=(len(edges) - 1, d))
    if scale is not None:
        for k, w in enumerate(scale):
            base[k + 1] = (1 - w) * base[k] + w * base[k + 1]
    rows = [np.repeat(base[k][None], b - a, 0) for k, (a, b) in enumerate(zip(edges[:-1], edges[1:]))]
    return np.concatenate(rows) + noise * rng.normal(size=(n, d))


def naive_depth(s: np.ndarray) -> np.ndarray:
    """Reference: climb left / right from each gap while the neighbour is not lower."""
    out = np.zeros(len(s))
    for i in range(len(s)):
        j = i
        while j > 0 and s[j - 1] >= s[j]:
            j -= 1
        k = i
        while k < len(s) - 1 and s[k + 1] >= s[k]:
            k += 1
        out[i] = (s[j] - s[i]) + (s[k] - s[i])
    return out


def run_online(tiler: S.OnlineSceneTiler, feats) -> list[tuple[int, int]]:
    """(boundary, index of the frame whose push returned it); flush reports at len(feats)."""
    got = []
    for t, f in enumerate(feats):
        got += [(b, t) for b in tiler.push(f)]
    got += [(b, len(feats)) for b in tiler.flush()]
    return got


# --- depth scores ------------------------------------------------------------------------------------


def test_depth_scores_known_valley():
    s = np.array([0.9, 0.95, 0.6, 0.3, 0.7, 0.98, 0.97])
    d = S.depth_scores(s)
    # Gap 3 (0.3): left climbs 0.6 -> 0.95 (0.9 is lower: stop), right climbs 0.7 -> 0.98.
    assert d[3] == pytest.approx((0.95 - 0.3) + (0.98 - 0.3))
    # Gap 2 sits on the slope: its right neighbour is lower, so only the left side counts.
    assert d[2] == pytest.approx(0.95 - 0.6)
    assert int(np.argmax(d)) == 3
    # Peaks themselves have depth 0.
    assert d[1] == pytest.approx(0.0) and d[5] == pytest.approx(0.0)


def test_depth_scores_plateau_flat_and_reference():
    assert S.depth_scores(np.array([1.0, 0.5, 0.5, 1.0])).tolist() == pytest.approx([0.0, 1.0, 1.0, 0.0])
    assert S.depth_scores(np.full(5, 0.7)).tolist() == pytest.approx([0.0] * 5)
    assert S.depth_scores(np.zeros(0)).shape == (0,)
    rng = np.random.default_rng(1)
    for _ in range(20):
        s = np.round(rng.uniform(-1, 1, size=int(rng.integers(1, 30))), 1)  # rounding makes ties
        assert S.depth_scores(s) == pytest.approx(naive_depth(s))


def test_similarities_cosine_and_torch_input():
    f = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
    s = S.similarities(torch.tensor(f, dtype=torch.float32))
    assert s == pytest.approx([1 / np.sqrt(2), 1 / np.sqrt(2), 0.0, 1.0])
    assert S.similarities(f[:1]).shape == (0,)


# --- offline boundaries ---------------------------------------------------------------------------------


def test_offline_boundaries_find_known_cuts():
    cuts = [17, 40, 71]
    feats = piecewise(100, cuts)
    assert S.boundaries(feats) == cuts
    assert S.boundaries(torch.tensor(feats)) == cuts
    assert S.boundaries(piecewise(100, [])) == []  # noise alone is not a scene cut


def test_offline_top_k_picks_the_deepest():
    cuts = [20, 50, 80]
    feats = piecewise(100, cuts, scale=[1.0, 0.35, 1.0])  # the cut at 50 is weak
    assert S.boundaries(feats, top_k=2) == [20, 80]
    assert S.boundaries(feats, top_k=3) == cuts


def test_offline_min_scene_keeps_the_stronger_of_close_cuts():
    # A strong cut at 30 and a weaker one at 33: a 3-frame scene in between.
    feats = piecewise(80, [30, 33], scale=[1.0, 0.5], noise=0.01)
    both = S.boundaries(feats, min_scene=1, min_depth=0.05, alpha=0.0)
    assert both == [30, 33]
    assert S.boundaries(feats, min_scene=5, min_depth=0.05, alpha=0.0) == [30]
    # A cut closer than min_scene to the end of the video is dropped too.
    assert S.boundaries(piecewise(40, [38]), min_scene=3) == []


def test_scenes_from_boundaries():
    assert S.scenes_from_boundaries([17, 40], 50) == [(0, 17), (17, 40), (40, 50)]
    assert S.scenes_from_boundaries([], 5) == [(0, 5)]
    assert S.scenes_from_boundaries([], 0) == []
    with pytest.raises(ConfigError, match="boundaries"):
        S.scenes_from_boundaries([40, 17], 50)
    with pytest.raises(ConfigError, match="boundaries"):
        S.scenes_from_boundaries([0, 17], 50)


# --- online ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lookahead,min_scene", [(2, 2), (1, 1), (3, 4)])
def test_online_matches_offline_within_the_delay(lookahead, min_scene):
    for seed in range(3):
        cuts = sorted(np.random.default_rng(seed).choice(np.arange(10, 190), 5, replace=False).tolist())
        cuts = [c for k, c in enumerate(cuts) if k == 0 or c - cuts[k - 1] >= 6]
        feats = piecewise(200, cuts, seed=seed)
        tiler = S.OnlineSceneTiler(lookahead=lookahead, min_scene_frames=min_scene, max_scene_frames=None)
        assert tiler.delay == lookahead + min_scene - 1
        got = run_online(tiler, feats)
        assert [b for b, _ in got] == S.boundaries(feats, min_scene=min_scene) == cuts
        for b, t in got:  # reported by the push of frame b + delay at the latest, never before b + lookahead
            assert b + lookahead <= t <= b + tiler.delay


def features_with_sims(sims) -> np.ndarray:
    """2-D unit vectors whose adjacent cosines are exactly ``sims`` (angles add up arccos(s))."""
    angles = np.concatenate([[0.0], np.cumsum(np.arccos(np.clip(sims, -1, 1)))])
    return np.stack([np.cos(angles), np.sin(angles)], 1)


def test_online_keeps_the_stronger_of_two_close_cuts():
    # A weak cut at 30, a strong one at 33: with min_scene 5 only 33 may start a scene, so the
    # online tiler must hold 30 until 33 has been decided (that is what its delay is for).
    feats = piecewise(80, [30, 33], scale=[0.5, 1.0], noise=0.01)
    kw = {"min_depth": 0.05, "alpha": 0.0}
    assert S.boundaries(feats, min_scene=1, **kw) == [30, 33]
    assert S.boundaries(feats, min_scene=5, **kw) == [33]
    tiler = S.OnlineSceneTiler(min_scene_frames=5, max_scene_frames=None, **kw)
    got = run_online(tiler, feats)
    assert [b for b, _ in got] == [33]
    assert all(t <= b + tiler.delay for b, t in got)


def test_online_right_peak_climbs_within_the_lookahead():
    # A two-gap valley (a frame half-way between two scenes): gap 20 has depth (1 - .7) + (1 - .7)
    # only if its right peak climbs over 0.75 to 1.0, two gaps ahead.
    sims = [1.0] * 20 + [0.7, 0.75] + [1.0] * 20
    feats = features_with_sims(sims)
    assert S.depth_scores(S.similarities(feats))[20] == pytest.approx(0.6)
    kw = {"min_depth": 0.45, "max_scene_frames": None, "min_scene_frames": 1}
    assert S.boundaries(feats, min_depth=0.45, min_scene=1) == [21]
    assert S.OnlineSceneTiler(lookahead=2, **kw).extend(feats) == [21]
    assert S.OnlineSceneTiler(lookahead=1, **kw).extend(feats) == []  # 1 gap ahead: depth 0.35 only


def test_online_relative_threshold_uses_running_mean_and_std():
    # One deep valley, then shallow ones: with alpha 2 (and no absolute floor) only the deep one is
    # above mean + 2 std of the depths so far; with std = 0 the shallow ones would pass too.
    sims = np.ones(120)
    sims[30] = 0.0
    sims[[60, 80, 100]] = 0.9
    feats = features_with_sims(sims)
    assert S.boundaries(feats, alpha=2.0, min_depth=0.0) == [31]
    tiler = S.OnlineSceneTiler(alpha=2.0, min_depth=0.0, max_scene_frames=None)
    assert tiler.extend(feats) + tiler.flush() == [31]
    # With a look-ahead past the end, every depth is the offline one: the running stats are exact.
    feats = np.random.default_rng(2).normal(size=(40, 8))
    tiler = S.OnlineSceneTiler(lookahead=64, max_scene_frames=None)
    tiler.extend(feats)
    tiler.flush()
    depth = S.depth_scores(S.similarities(feats))
    stats = tiler.depth_stats
    assert stats["count"] == 39
    assert (stats["mean"], stats["std"]) == pytest.approx((depth.mean(), depth.std()))


def test_online_reset_and_extend_repeat_the_stream():
    feats = piecewise(120, [30, 77])
    tiler = S.OnlineSceneTiler(max_scene_frames=None)
    first = tiler.extend(feats) + tiler.flush()
    with pytest.raises(ConfigError, match="reset"):
        tiler.push(feats[0])
    tiler.reset()
    assert tiler.n_frames == 0 and tiler.last_boundary == 0
    assert tiler.extend(feats) + tiler.flush() == first == [30, 77]


def test_online_max_scene_forces_a_cut():
    feats = piecewise(100, [20], noise=0.01)
    tiler = S.OnlineSceneTiler(max_scene_frames=30, min_scene_frames=1)
    got = run_online(tiler, feats)
    assert [b for b, _ in got] == [20, 50, 80]
    assert [t - b for b, t in got] == [tiler.lookahead] * 3  # forced cuts come with the plain look-ahead delay
    scenes = S.scenes_from_boundaries([b for b, _ in got], len(feats))
    assert max(b - a for a, b in scenes) <= 30
    # Without the cap the long scenes stay whole.
    assert S.OnlineSceneTiler(max_scene_frames=None).extend(feats) == [20]


def test_online_state_is_constant_over_a_long_stream():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(2, 16))
    tiler = S.OnlineSceneTiler(max_scene_frames=64)

    def sizes():
        return {k: len(v) for k, v in vars(tiler).items() if hasattr(v, "__len__") and not isinstance(v, str)}

    found = 0
    for t in range(10_000):
        f = base[(t // 50) % 2] + 0.05 * rng.normal(size=16)  # a cut every 50 frames
        found += len(tiler.push(f))
        if t == 999:
            early = sizes()
    assert sizes() == early  # no buffer grew between frame 1,000 and frame 10,000
    assert len(tiler._gaps) <= tiler.lookahead + 1
    assert found == pytest.approx(10_000 / 50 - 1, abs=1)


# --- F1 -------------------------------------------------------------------------------------------------


def test_boundary_f1_perfect_empty_and_shifted():
    perfect = S.boundary_f1([10.0, 30.5], [10.0, 30.5])
    assert (perfect["f1"], perfect["tp"], perfect["fp"], perfect["fn"]) == (1.0, 2, 0, 0)
    assert S.boundary_f1([], [])["f1"] == 1.0
    none = S.boundary_f1([], [12.0])
    assert (none["recall"], none["f1"], none["fn"]) == (0.0, 0.0, 1)
    spurious = S.boundary_f1([5.0], [])
    assert (spurious["precision"], spurious["f1"], spurious["fp"]) == (0.0, 0.0, 1)
    assert S.boundary_f1([10.5, 31.0], [10.0, 30.0], tolerance=1.0)["f1"] == 1.0
    shifted = S.boundary_f1([12.0, 32.0], [10.0, 30.0], tolerance=1.0)
    assert (shifted["tp"], shifted["fp"], shifted["fn"], shifted["f1"]) == (0, 2, 2, 0.0)
    # One-to-one: two predictions near one truth match it once; the closer one wins.
    two = S.boundary_f1([9.8, 10.6], [10.0, 11.5], tolerance=1.0)
    assert (two["tp"], two["fp"], two["fn"]) == (2, 0, 0)
    one = S.boundary_f1([9.8, 10.1], [10.0], tolerance=1.0)
    assert (one["tp"], one["fp"], one["fn"]) == (1, 1, 0)
    assert one["precision"] == 0.5 and one["recall"] == 1.0


# --- ShapeWorld -----------------------------------------------------------------------------------------


def test_pixel_tiling_on_shapeworld_episodes():
    tp = fp = fn = 0
    cuts_seen = 0
    for seed in (3, 5, 8):
        ep = sw.generate_episode(seed, sw.WorldConfig(duration=120.0))
        truth = ep.truth()
        fps = truth["fps"]
        cuts = [sc["start"] for sc in truth["scenes"][1:]]
        cuts_seen += len(cuts)
        feats = S.pixel_features([f for _, f in ep.frames()])
        tiler = S.OnlineSceneTiler(max_scene_frames=None)
        for pred in (S.boundaries(feats), tiler.extend(feats) + tiler.flush()):
            r = S.boundary_f1([b / fps for b in pred], cuts, tolerance=1.0)
            tp, fp, fn = tp + r["tp"], fp + r["fp"], fn + r["fn"]
    assert cuts_seen >= 3  # the seeds have cuts to find (and events that are not cuts)
    f1 = 2 * tp / (2 * tp + fp + fn)
    assert f1 >= 0.9, (tp, fp, fn)


def test_pixel_features_shapes():
    frames = [np.full((8, 12, 3), v, np.uint8) for v in (0, 255)]
    h = S.pixel_features(frames, bins=2, grid=2)
    assert h.shape == (2, 2 * 2 * 8) and h.sum(1) == pytest.approx([4.0, 4.0])
    m = S.pixel_features(np.stack(frames), kind="mean", grid=4)
    assert m.shape == (2, 48) and m[0].max() == 0.0 and m[1].min() == pytest.approx(1.0)


# --- bad input ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("call,arg", [
    (lambda: S.boundaries(np.zeros(5)), "features"),
    (lambda: S.boundaries(np.zeros((2, 3, 4))), "features"),
    (lambda: S.similarities(np.array([[0.0, 1.0], [np.nan, 1.0]])), "features"),
    (lambda: S.boundaries(np.ones((4, 2)), alpha=-0.5), "alpha"),
    (lambda: S.boundaries(np.ones((4, 2)), top_k=0), "top_k"),
    (lambda: S.boundaries(np.ones((4, 2)), min_scene=0), "min_scene"),
    (lambda: S.depth_scores(np.ones((2, 2))), "sims"),
    (lambda: S.OnlineSceneTiler(alpha=-1), "alpha"),
    (lambda: S.OnlineSceneTiler(alpha=float("nan")), "alpha"),
    (lambda: S.OnlineSceneTiler(lookahead=0), "lookahead"),
    (lambda: S.OnlineSceneTiler(lookahead=1.5), "lookahead"),
    (lambda: S.OnlineSceneTiler(max_scene_frames=2, min_scene_frames=3), "max_scene_frames"),
    (lambda: S.OnlineSceneTiler().push(np.array([1.0, np.nan])), "feature"),
    (lambda: S.OnlineSceneTiler().push(np.zeros((2, 3))), "feature"),
    (lambda: S.boundary_f1([1.0], [1.0], tolerance=-1), "tolerance"),
    (lambda: S.pixel_features(np.zeros((2, 8, 8)), kind="histogram"), "frames"),
])
def test_bad_input_names_the_argument_and_the_fix(call, arg):
    with pytest.raises(ConfigError) as err:
        call()
    msg = str(err.value)
    assert msg.startswith(arg), msg
    problem, _, fix = msg.partition("; ")  # "ARG: what is wrong; how to fix it"
    assert fix and any(w in fix for w in ("pass", "use", "repair", "raise", "drop")), msg


def test_online_rejects_a_feature_of_another_width():
    tiler = S.OnlineSceneTiler()
    tiler.push(np.ones(4))
    with pytest.raises(ConfigError, match="feature: has 3 values"):
        tiler.push(np.ones(3))


DEFAULT_WEIGHTS = __import__("pathlib").Path(S.__file__).parents[1] / "assets" / "mmlc-tiny" / "model.safetensors"


@pytest.mark.slow
@pytest.mark.skipif(not DEFAULT_WEIGHTS.is_file(), reason="the trained default model (mmlc-tiny) is not built yet")
def test_model_feature_tiling_on_shapeworld_episodes():
    import mmlc

    model = mmlc.load()
    tp = fp = fn = 0
    for seed in (3, 5, 8):
        ep = sw.generate_episode(seed, sw.WorldConfig(duration=120.0))
        cuts = [sc["start"] for sc in ep.truth()["scenes"][1:]]
        with torch.inference_mode():
            feats = model.vision_features(model.preprocess([f for _, f in ep.frames()]))[:, 0]
        tiler = S.OnlineSceneTiler(max_scene_frames=None)
        for pred in (S.boundaries(feats), tiler.extend(feats) + tiler.flush()):
            r = S.boundary_f1([b / ep.config.fps for b in pred], cuts, tolerance=1.0)
            tp, fp, fn = tp + r["tp"], fp + r["fp"], fn + r["fn"]
    assert 2 * tp / (2 * tp + fp + fn) >= 0.9, (tp, fp, fn)
