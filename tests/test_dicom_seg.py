"""DICOM SEG (issue 34): predict --dicom_seg on a DICOM series with unsorted file names, re-read
with highdicom and pydicom: every frame lies on its source slice (position, SOP instance) and
holds the mask that NAME_mask.nii.gz holds there; segments and the algorithm are named."""

from __future__ import annotations

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom

from covidseg.data.dicom import series_files
from covidseg.data.phantom import phantom, write_dicom_series, write_nifti
from covidseg.predict import main


def test_dicom_seg_frames_land_on_their_source_slices(tmp_path):
    p = phantom("chest", slices=10, size=48, spacing=(8.0, 6.5, 6.5), lesions=3, seed=3)
    series = write_dicom_series(nib.load(write_nifti(tmp_path / "ct.nii", p.hu, p)), tmp_path / "series")
    sources = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, series_files(series))}
    by_name = [int(ds.InstanceNumber) for ds in sources.values()]  # series_files: sorted by file name
    assert by_name != sorted(by_name)  # the files arrive unsorted: name order is not slice order
    out = tmp_path / "out"
    assert main(["--input", str(series), "--output", str(out), "--lungs", "true", "--dicom_seg", "true", "--tta", "false", "--device", "cpu", "--num_workers", "0"]) == 0

    seg = hd.seg.segread(out / "series_seg.dcm")
    assert seg.Modality == "SEG" and seg.FrameOfReferenceUID == next(iter(sources.values())).FrameOfReferenceUID
    assert seg.StudyInstanceUID == next(iter(sources.values())).StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == next(iter(sources.values())).SeriesInstanceUID
    labels = {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence}
    assert labels == {1: "lesion", 2: "right lung", 3: "left lung"}
    algo = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    from covidseg.model import pretrained

    version = pretrained.card(pretrained.resolve())["version"]  # the built-in model predicted (no --ckpt)
    assert algo.AlgorithmName == "covidseg" and f"model reference {version}" in algo.AlgorithmVersion and version == "2"

    # the truth per source slice, found geometrically: the slice's ImagePositionPatient (LPS)
    # through the NIfTI mask's affine (RAS) gives its voxel index k; the frame must equal mask[:, :, k].T
    mask_img, lung_img = nib.load(out / "series_mask.nii.gz"), nib.load(out / "series_lungs.nii.gz")
    lesion, lungs = np.asanyarray(mask_img.dataobj), np.asanyarray(lung_img.dataobj)
    inverse = np.linalg.inv(mask_img.affine)
    truth = {1: lesion, 2: (lungs == 1).astype(np.uint8), 3: (lungs == 2).astype(np.uint8)}
    assert lesion.any() and (lungs == 1).any() and (lungs == 2).any()
    pixels = seg.pixel_array if seg.pixel_array.ndim == 3 else seg.pixel_array[None]
    seen = set()
    for i, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        position = np.array(frame.PlanePositionSequence[0].ImagePositionPatient, float)
        source = sources[uid]
        assert np.allclose(position, np.array(source.ImagePositionPatient, float), atol=1e-4)
        ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ [*position, 1.0]
        x, y, k = np.rint(inverse @ ras)[:3].astype(int)
        assert (x, y) == (0, 0)  # the slice's first pixel is voxel (0, 0, k)
        assert np.array_equal(pixels[i] > 0, truth[number][:, :, k].T > 0), (uid, number, k)
        seen.add((number, int(k)))
    # every slice with a segment has its frame (empty frames are left out)
    assert seen == {(n, k) for n, t in truth.items() for k in range(t.shape[2]) if t[:, :, k].any()}


def test_a_class_models_seg_has_ground_glass_and_consolidation_segments(tmp_path):
    """Issue 34 with issue 33: a class model's label map adds two segments, each frame on its slice."""
    from covidseg.data.dicom import read_series
    from covidseg.data.volumes import to_display
    from covidseg.prediction.dicom_seg import write_dicom_seg

    p = phantom("chest", slices=10, size=48, spacing=(8.0, 6.5, 6.5), lesions=3, seed=4)
    series = write_dicom_series(nib.load(write_nifti(tmp_path / "ct.nii", p.hu, p)), tmp_path / "series")
    ref, _ = read_series(series)
    lesion = to_display(np.zeros(ref.shape, np.uint8), ref.affine) > 0
    classes = np.zeros(lesion.shape, np.uint8)
    classes[4, 10:20, 10:20], classes[6, 30:40, 30:40] = 1, 2
    lesion |= classes > 0
    write_dicom_seg(tmp_path / "seg.dcm", series, ref, lesion, None, "m", "1", classes=classes)
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert {d.SegmentNumber: d.SegmentLabel for d in seg.SegmentSequence} == {1: "lesion", 2: "ground-glass opacity", 3: "consolidation"}
    sources = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, series_files(series))}
    z = {uid: float(ds.ImagePositionPatient[2]) for uid, ds in sources.items()}
    order = sorted(z, key=z.get)  # display slice k is the k-th from the feet
    frames = {(int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber), order.index(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID))
              for f in seg.PerFrameFunctionalGroupsSequence}  # fmt: skip
    assert frames == {(1, 4), (1, 6), (2, 4), (3, 6)}
