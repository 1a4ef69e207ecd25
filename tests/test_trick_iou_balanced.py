"""IoU-balanced negative sampling (Libra R-CNN) against the authors' IoUBalancedNegSampler
(OceanPang/Libra_R-CNN mmdet/core/bbox/samplers/iou_balanced_neg_sampler.py): hand-computed
cases whose counts the rule fixes, although the draws are random (quotas and pools chosen so)."""
import pytest
import torch
from torchvision.models.detection._utils import BalancedPositiveNegativeSampler

from ablate.testing import build_trick, tiny_batch, tiny_model
from ablate.tricks.loss.iou_balanced import IoUBalancedSampler


pytestmark = pytest.mark.usefixtures("single_thread")


def image(*negatives, positives=((1.0, 2),), ignored=0):
    """One image's labels and max IoUs: negatives (label 0) given as (IoU, count) pairs; positives
    (label 1) likewise, by default the 2 ground-truth boxes added as proposals (IoU 1.0)."""
    groups = [(iou, n, 1) for iou, n in positives] + [(iou, n, 0) for iou, n in negatives] + [(0.45, ignored, -1)]
    ious = torch.cat([torch.full((n,), float(iou)) for iou, n, _ in groups])
    labels = torch.cat([torch.full((n,), label, dtype=torch.int64) for _, n, label in groups])
    return labels, ious


def sample(sampler, labels, ious, seed=0):
    torch.manual_seed(seed)
    (pos,), (neg,) = sampler([labels], [ious])
    return pos.bool(), neg.bool()


def taken(neg, ious, *values):
    """How many sampled negatives have each IoU of `values`."""
    return [int((neg & torch.isclose(ious, torch.tensor(float(v)))).sum()) for v in values]


def libra(batch, num_bins=3, floor_thr=0.0, floor_fraction=0.0):
    return IoUBalancedSampler(batch, 0.25, num_bins, floor_thr, floor_fraction)


@pytest.mark.parametrize("seed", [0, 1])
def test_each_of_k_bins_over_zero_to_the_largest_iou_of_all_proposals_gives_num_over_k(seed):
    # 2 positives, so 62 - 2 = 60 negatives, 20 from each bin of [0, 1): [0, 1/3), [1/3, 2/3), [2/3, 1).
    # The bins over the negatives' own interval [0, 0.7] would put 0.3 with 0.5, and 0.5 with 0.7;
    # random sampling would take mostly IoU 0; IoU 0 binned with 0.3 (no floor) would take some.
    labels, ious = image((0.0, 400), (0.3, 100), (0.5, 50), (0.7, 30))
    _, neg = sample(libra(62), labels, ious, seed)
    assert taken(neg, ious, 0.0, 0.3, 0.5, 0.7) == [0, 20, 20, 20]
    # 61 negatives: 20 each (61 // 3), and one more from the IoU > 0 ones not yet taken
    _, neg = sample(libra(63), labels, ious, seed)
    counts = taken(neg, ious, 0.0, 0.3, 0.5, 0.7)
    assert counts[0] == 0 and min(counts[1:]) == 20 and sum(counts) == 61


@pytest.mark.parametrize("seed", [0, 1])
def test_empty_top_bin_and_short_bin_leave_their_share_to_random_negatives_above_iou_zero(seed):
    # Realistic: negatives below IoU 0.5, the max IoU 1.0 (ground truth as proposals), so the top
    # bin [2/3, 1) is empty. 65 - 5 positives = 60 negatives, 20 a bin: [0, 1/3) gives 20 of its
    # 100, [1/3, 2/3) all its 12, [2/3, 1) none; the 28 left over come from the 80 of (0, 1/3)
    # not yet taken, none from IoU 0 (the floor set: no quota, used only when those run out).
    labels, ious = image((0.0, 400), (0.1, 50), (0.3, 50), (0.4, 12), positives=((1.0, 2), (0.8, 3)))
    pos, neg = sample(libra(65), labels, ious, seed)
    zero, low1, low3, mid = taken(neg, ious, 0.0, 0.1, 0.3, 0.4)
    assert (zero, low1 + low3, mid) == (0, 48, 12)
    assert int(pos.sum()) == 5 and int(neg.sum()) == 60


@pytest.mark.parametrize("seed", [0, 1])
def test_iou_zero_negatives_are_taken_only_when_those_above_zero_run_out(seed):
    # floor_thr 0: 40 negatives above IoU 0 for 60 places: all 40 (no binning), 20 of IoU 0.
    labels, ious = image((0.0, 400), (0.1, 30), (0.4, 10))
    _, neg = sample(libra(62), labels, ious, seed)
    assert taken(neg, ious, 0.0, 0.1, 0.4) == [20, 30, 10]


@pytest.mark.parametrize("seed", [0, 1])
def test_floor_thr_above_zero_takes_the_floor_fraction_and_starts_the_bins_at_floor_thr(seed):
    # floor_thr 0.1, floor_fraction 0.5: 30 of the 60 negatives from IoU >= 0.1, binned over
    # [0.1, 1): [0.1, 0.4) gives 10 of 0.35, [0.4, 0.7) all its 10 of 0.45, [0.7, 1) none: 10 more
    # 0.35 at random. The other 30 at random from the floor set [0, 0.1). (Bins from 0 would put
    # 0.35 with 0.45 in [1/3, 2/3).)
    sampler = libra(62, floor_thr=0.1, floor_fraction=0.5)
    labels, ious = image((0.0, 100), (0.05, 100), (0.35, 100), (0.45, 10))
    _, neg = sample(sampler, labels, ious, seed)
    zero, floor, low, mid = taken(neg, ious, 0.0, 0.05, 0.35, 0.45)
    assert (zero + floor, low, mid) == (30, 20, 10)
    # a floor set short of its 30: all 5, and the 25 left over from any negative not yet taken
    labels, ious = image((0.05, 5), (0.35, 100), (0.45, 10))
    _, neg = sample(sampler, labels, ious, seed)
    assert taken(neg, ious, 0.05, 0.35, 0.45) == [5, 45, 10]


def test_floor_thr_minus_one_bins_every_negative_from_zero_on_every_call():
    # No floor set: IoU 0 shares the bin [0, 1/3) with 0.1 (200: 20 taken), [1/3, 2/3) gives all
    # its 10, and the 30 left over come from all the others, so IoU 0 is taken. Unlike the
    # reference's -1 the sampler stays so after its first call (see conf/tricks/iou_balanced.yaml).
    labels, ious = image((0.0, 100), (0.1, 100), (0.4, 10))
    sampler = libra(62, floor_thr=-1)
    for seed in (0, 1):
        _, neg = sample(sampler, labels, ious, seed)
        zero, low, mid = taken(neg, ious, 0.0, 0.1, 0.4)
        assert zero > 0 and zero + low == 50 and mid == 10
    assert sampler.floor_thr == -1
    _, neg = sample(libra(62, floor_thr=0), labels, ious)  # floor_thr 0 for contrast: no IoU 0
    assert taken(neg, ious, 0.0, 0.1, 0.4) == [0, 50, 10]
    with pytest.raises(ValueError, match="floor_thr"):
        libra(62, floor_thr=-0.5)  # as the reference's assert: -1 or at least 0


def test_positives_are_drawn_as_torchvisions_and_all_negatives_when_few():
    # 64 of the 102 positives, the same as torchvision's sampler draws with the same seed; 192
    # negatives: all 100 above IoU 0 (too few to bin), 92 of IoU 0; none of the 20 ignored.
    labels, ious = image((0.0, 300), (0.2, 100), positives=((1.0, 2), (0.7, 100)), ignored=20)
    for seed in (0, 1):
        pos, neg = sample(libra(256), labels, ious, seed)
        torch.manual_seed(seed)
        (tv_pos,), _ = BalancedPositiveNegativeSampler(256, 0.25)([labels])
        assert torch.equal(pos, tv_pos.bool()) and int(pos.sum()) == 64
        assert taken(neg, ious, 0.0, 0.2) == [92, 100] and (labels[neg] == 0).all()
    few = torch.tensor([0, 0, 1, 0, -1])
    pos, neg = sample(libra(16), few, torch.tensor([0.0, 0.2, 1.0, 0.3, 0.45]))
    assert neg.tolist() == [True, True, False, True, False] and pos.tolist() == [False, False, True, False, False]


def test_plain_random_sampling_gives_a_different_iou_distribution():
    # A realistic pool: 1000 negatives of IoU 0, 2000 of IoU 0.49 u^3 (most near 0, about 12 %
    # above 1/3). 256 - 2 = 254 negatives: IoU-balanced takes 84 (254 // 3) or more above 1/3 and
    # none of IoU 0; random sampling takes them in proportion to the pool.
    g = torch.Generator().manual_seed(0)
    above0 = 0.49 * torch.rand(2000, generator=g) ** 3
    labels = torch.cat([torch.ones(2, dtype=torch.int64), torch.zeros(3000, dtype=torch.int64)])
    ious = torch.cat([torch.ones(2), torch.zeros(1000), above0])
    hard, easy = [], []
    for seed in range(10):
        _, neg = sample(libra(256), labels, ious, seed)
        torch.manual_seed(seed)
        _, (tv_neg,) = BalancedPositiveNegativeSampler(256, 0.25)([labels])
        tv_neg = tv_neg.bool()
        assert int((neg & (ious == 0)).sum()) == 0 and int((neg & (ious >= 1 / 3)).sum()) >= 84
        hard.append(float((tv_neg & (ious >= 1 / 3)).sum()))
        easy.append(float((tv_neg & (ious == 0)).sum()))
    pool_hard = int((ious[2:] >= 1 / 3).sum())
    assert sum(hard) / 10 < 2 * 254 * pool_hard / 3000 < 84  # random: about 254 x pool share
    assert sum(easy) / 10 > 60  # about 254 / 3 of IoU 0


def test_trick_installs_the_sampler_in_faster_rcnn_and_a_training_forward_uses_it(monkeypatch):
    model = tiny_model("faster_rcnn")
    trick = build_trick("iou_balanced", "faster_rcnn")
    sampler = trick.on_model(model).roi_heads.fg_bg_sampler
    assert isinstance(sampler, IoUBalancedSampler)
    assert (sampler.num_bins, sampler.floor_thr, sampler.floor_fraction) == (3, 0.0, 0.0)  # conf defaults
    assert (sampler.batch_size_per_image, sampler.positive_fraction) == (256, 0.25)  # from conf/model

    calls = []
    original = IoUBalancedSampler.__call__

    def spy(self, matched_idxs, max_ious):
        out = original(self, matched_idxs, max_ious)
        # copies: the head then overwrites its lists' items with the sampled proposals'
        calls.append(([m.clone() for m in matched_idxs], [i.clone() for i in max_ious], out))
        return out

    monkeypatch.setattr(IoUBalancedSampler, "__call__", spy)
    images, targets = tiny_batch("faster_rcnn")
    model.train()
    losses = model(images, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert len(calls) == 1
    (labels, no_box_labels), (ious, no_box_ious), (pos_masks, neg_masks) = calls[0]
    # every proposal's largest IoU, the ground-truth boxes added as proposals included: max 1.0
    assert float(ious.max()) == 1.0 and len(ious) == len(labels)
    assert float(no_box_ious.max()) == 0.0 and (no_box_labels == 0).all()
    neg = neg_masks[0].bool()
    num_neg = min(int((labels == 0).sum()), 256 - int(pos_masks[0].sum()))
    assert int(neg.sum()) == num_neg and (labels[neg] == 0).all()
    above0 = int(((labels == 0) & (ious > 0)).sum())
    assert int((neg & (ious == 0)).sum()) == max(0, num_neg - above0)  # IoU 0 only once those run out
