import torch

from training.corruption import CHANGED, blob_masks, corrupt, random_crops


def test_random_crops_are_slices_of_their_images():
    torch.manual_seed(0)
    images = torch.rand(3, 2, 20, 30)
    crops = random_crops(images, 8, per_image=4)
    assert crops.shape == (12, 2, 8, 8)
    for index, crop in enumerate(crops):
        source = images[index // 4]
        found = any(
            torch.equal(source[:, r : r + 8, c : c + 8], crop) for r in range(13) for c in range(23)
        )
        assert found


def test_blob_masks_are_binary_smooth_blobs_of_a_part_of_the_crop():
    torch.manual_seed(0)
    masks = blob_masks(64, (48, 48), torch.device("cpu"))
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    share = masks.mean(dim=(1, 2, 3))
    assert 0.02 < float(share.mean()) < 0.5
    assert float(share.max()) < 0.9


def test_corruption_marks_exactly_the_visibly_changed_pixels_of_about_half_the_crops():
    torch.manual_seed(0)
    crops = torch.rand(256, 1, 32, 32) * 0.5 + 0.25
    corrupted, masks = corrupt(crops)
    change = (corrupted - crops).abs().amax(dim=1, keepdim=True)
    assert bool((change[masks == 0] <= CHANGED).all())
    assert bool((change[masks == 1] > CHANGED).all())
    touched = (masks.flatten(1).sum(1) > 0).float().mean()
    assert 0.3 < float(touched) < 0.6
    assert float(corrupted.min()) >= 0.0 and float(corrupted.max()) <= 1.0
