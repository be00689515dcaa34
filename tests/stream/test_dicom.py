"""DICOM sources: files written by pydicom here and by dcmtk, each syntax and colour model we read, bad input."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
import zmq
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.pixels import convert_color_space
from pydicom.uid import (JPEG2000Lossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian, MPEG4HP41, RLELossless,
                         generate_uid)

from stream import protocol
from stream.capture import CaptureConfig, capture
from stream.dicom import DicomSource, is_dicom, is_dicom_folder
from stream.sources import SourceError
from stream.worker import WorkerConfig
from tests.stream.conftest import make_frames, recv_until
from tests.stream.test_worker import offline_scores, start_worker, wait_for_heartbeat
from tools.sources import open_source

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
PATIENT = "Secretname^Patientfirst"
PATIENT_ID = "PID-778899"
needs_dcmtk = pytest.mark.skipif(shutil.which("img2dcm") is None, reason="dcmtk is not installed (.ci/run installs it)")


def gray_frames(n: int, height: int = 32, width: int = 40) -> np.ndarray:
    """uint8 (n, height, width): a disc moving over speckle."""
    return np.stack([f[..., 0] for f in make_frames(n, height, width)])


def write_cine(path: Path, frames: np.ndarray, *, photometric: str = "MONOCHROME2",
               syntax=ExplicitVRLittleEndian, frame_count: int | None = None, **tags) -> Path:
    """Write uint8 ``frames`` (N, H, W) gray or (N, H, W, 3) RGB as an Ultrasound Multi-frame Image with pydicom.

    ``photometric`` YBR_FULL stores the RGB frames converted to YBR; ``syntax``
    RLE or JPEG 2000 compresses with pydicom's own encoders; ``frame_count``
    overrides Number of Frames; ``tags`` are set on the data set as given.
    """
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = US_MULTIFRAME
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = US_MULTIFRAME, ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "US"
    ds.PatientName, ds.PatientID = PATIENT, PATIENT_ID
    ds.NumberOfFrames = frame_count if frame_count is not None else len(frames)
    ds.Rows, ds.Columns = frames.shape[1:3]
    colour = frames.ndim == 4
    ds.SamplesPerPixel = 3 if colour else 1
    if colour:
        ds.PlanarConfiguration = 0
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    stored = convert_color_space(frames, "RGB", "YBR_FULL") if photometric == "YBR_FULL" else frames
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    if syntax == ImplicitVRLittleEndian:
        ds.file_meta.TransferSyntaxUID = syntax
    elif syntax != ExplicitVRLittleEndian:
        ds.compress(syntax, stored)
    ds.save_as(path, enforce_file_format=True)
    return path


def dcmtk(*args: str | Path) -> None:
    subprocess.run([str(a) for a in args], check=True, capture_output=True, timeout=60)


def frames_of(source: DicomSource) -> tuple[list[np.ndarray], list[float]]:
    images, times = [], []
    for image, t in source:
        images.append(image)
        times.append(t)
    return images, times


def bgr(rgb: np.ndarray) -> np.ndarray:
    return rgb[..., ::-1]


# --- reading: syntaxes, colour models, timing, spacing ----------------------------------


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, RLELossless, JPEG2000Lossless],
                         ids=["explicit", "implicit", "rle", "jpeg2000"])
def test_lossless_syntaxes_give_back_the_exact_frames(tmp_path, syntax):
    frames = gray_frames(6)
    path = write_cine(tmp_path / "exam.dcm", frames, syntax=syntax, FrameTime=40)
    source = DicomSource(path)
    images, times = frames_of(source)
    assert source.name == "exam" and source.fps == pytest.approx(25.0) and source.missing == 0
    np.testing.assert_array_equal(np.stack(images), frames)
    assert times == pytest.approx([i * 0.04 for i in range(6)])


@needs_dcmtk
def test_a_jpeg_ls_cine_compressed_by_dcmtk_is_read_exactly(tmp_path):
    frames = gray_frames(5)
    plain = write_cine(tmp_path / "plain.dcm", frames, FrameTime=33.3)
    dcmtk("dcmcjpls", "+el", plain, tmp_path / "jls.dcm")
    assert pydicom.dcmread(tmp_path / "jls.dcm").file_meta.TransferSyntaxUID.name.startswith("JPEG-LS Lossless")
    images, _ = frames_of(DicomSource(tmp_path / "jls.dcm"))
    np.testing.assert_array_equal(np.stack(images), frames)


@pytest.mark.parametrize(("photometric", "syntax", "atol"), [("RGB", ExplicitVRLittleEndian, 0),
                                                             ("RGB", RLELossless, 0),
                                                             ("YBR_FULL", ExplicitVRLittleEndian, 2)])
def test_colour_frames_come_out_bgr(tmp_path, photometric, syntax, atol):
    rgb = np.stack([f[..., ::-1] for f in make_frames(3, 32, 40)])
    rgb[..., 0] = 250  # a red cast, so a swapped channel order shows
    path = write_cine(tmp_path / "colour.dcm", rgb, photometric=photometric, syntax=syntax)
    images, _ = frames_of(DicomSource(path))
    assert images[0].shape == (32, 40, 3)
    np.testing.assert_allclose(np.stack(images).astype(int), bgr(rgb).astype(int), atol=atol)


@needs_dcmtk
@pytest.mark.parametrize("colour", [False, True], ids=["monochrome2", "ybr_full_422"])
def test_a_jpeg_baseline_secondary_capture_made_by_img2dcm(tmp_path, colour):
    image = make_frames(1, 48, 64)[0]
    if not colour:
        image = image[..., 0]
    cv2.imwrite(str(tmp_path / "shot.jpg"), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    dcmtk("img2dcm", tmp_path / "shot.jpg", tmp_path / "shot.dcm")
    written = pydicom.dcmread(tmp_path / "shot.dcm")
    assert written.file_meta.TransferSyntaxUID.name.startswith("JPEG Baseline")
    assert written.PhotometricInterpretation == ("YBR_FULL_422" if colour else "MONOCHROME2")
    images, times = frames_of(DicomSource(tmp_path / "shot.dcm"))
    expected = cv2.imread(str(tmp_path / "shot.jpg"), cv2.IMREAD_COLOR if colour else cv2.IMREAD_GRAYSCALE)
    assert len(images) == 1 and times == [0.0] and images[0].shape == expected.shape
    # Two JPEG decoders may round differently, never by much.
    assert np.abs(images[0].astype(int) - expected.astype(int)).mean() < 2.0


def test_pacing_from_frame_time_vector_and_cine_rate_and_fps_overrides_both(tmp_path):
    frames = gray_frames(4)
    vector = write_cine(tmp_path / "vector.dcm", frames, FrameTimeVector=[0, 20, 40, 20])
    source = DicomSource(vector)
    assert frames_of(source)[1] == pytest.approx([0.0, 0.02, 0.06, 0.08])
    assert source.fps == pytest.approx(3 / 0.08)
    rate = DicomSource(write_cine(tmp_path / "rate.dcm", frames, CineRate=50))
    assert rate.fps == 50 and frames_of(rate)[1] == pytest.approx([0.0, 0.02, 0.04, 0.06])
    forced = DicomSource(vector, fps=10)
    assert forced.fps == 10 and frames_of(forced)[1] == pytest.approx([0.0, 0.1, 0.2, 0.3])
    bare = DicomSource(write_cine(tmp_path / "bare.dcm", frames))
    assert bare.fps == 25.0 and frames_of(bare)[1] == pytest.approx([0.0, 0.04, 0.08, 0.12])


def _region(units: int, dx: float, dy: float) -> Dataset:
    region = Dataset()
    region.RegionSpatialFormat = 1
    region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection = units, units
    region.PhysicalDeltaX, region.PhysicalDeltaY = dx, dy
    return region


def test_spacing_comes_from_the_first_ultrasound_region_in_cm(tmp_path):
    frames = gray_frames(2)
    seconds = _region(4, 0.5, 0.5)  # units 4 are seconds: a Doppler strip, not a distance
    path = write_cine(tmp_path / "us.dcm", frames, SequenceOfUltrasoundRegions=[seconds, _region(3, 0.02, 0.025)])
    assert DicomSource(path).spacing == pytest.approx((0.25, 0.2))
    assert DicomSource(write_cine(tmp_path / "none.dcm", frames, SequenceOfUltrasoundRegions=[seconds])).spacing is None


def test_a_folder_plays_its_files_in_instance_number_order_as_one_stream(tmp_path):
    folder = tmp_path / "series"
    folder.mkdir()
    frames = gray_frames(6)
    write_cine(folder / "a.dcm", frames[3:], FrameTime=40, InstanceNumber=2)
    write_cine(folder / "b.dcm", frames[:3], FrameTime=40, InstanceNumber=1)
    assert is_dicom_folder(folder) and not is_dicom_folder(tmp_path)
    source = open_source(str(folder))
    assert isinstance(source, DicomSource) and source.name == "series"
    images, times = frames_of(source)
    np.testing.assert_array_equal(np.stack(images), frames)
    assert times == pytest.approx([i * 0.04 for i in range(6)])


def test_open_source_recognises_a_dicom_file_with_or_without_its_suffix(tmp_path):
    path = write_cine(tmp_path / "IM0001", gray_frames(2))
    assert is_dicom(path) and isinstance(open_source(str(path)), DicomSource)


# --- bad input: one line each ------------------------------------------------------------


def one_line_error(path: Path) -> str:
    with pytest.raises(SourceError) as info:
        DicomSource(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


def test_a_file_that_is_not_dicom(tmp_path):
    path = tmp_path / "exam.dcm"
    path.write_text("patient report\n" * 20)
    assert "not a DICOM file" in one_line_error(path)


def test_dicom_without_pixel_data(tmp_path):
    path = write_cine(tmp_path / "sr.dcm", gray_frames(1))
    ds = pydicom.dcmread(path)
    del ds.PixelData
    ds.save_as(path)
    assert "no pixel data" in one_line_error(path)


def test_a_transfer_syntax_pydicom_cannot_decode(tmp_path):
    path = write_cine(tmp_path / "h264.dcm", gray_frames(1))
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData = pydicom.encaps.encapsulate([b"\x00\x00\x00\x01" * 8])
    ds.save_as(path)
    message = one_line_error(path)
    assert "MPEG-4" in message and "has no decoder" in message


@needs_dcmtk
def test_a_transfer_syntax_whose_plugin_is_not_installed_names_the_package(tmp_path):
    path = write_cine(tmp_path / "plain.dcm", gray_frames(2))
    dcmtk("dcmcjpls", path, tmp_path / "jls.dcm")
    # A fresh interpreter in which pylibjpeg cannot be imported, as on a machine without the plugins.
    code = ("import sys; sys.modules['pylibjpeg'] = None\n"
            "from stream.dicom import DicomSource\nfrom stream.sources import SourceError\n"
            f"try:\n    DicomSource({str(tmp_path / 'jls.dcm')!r})\nexcept SourceError as e:\n    print(e)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            cwd=Path(__file__).resolve().parents[2])
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1 and "JPEG-LS Lossless" in lines[0]
    assert "pip install pylibjpeg pylibjpeg-libjpeg" in lines[0]


def test_captured_frames_carry_the_files_spacing_in_mm_and_a_video_none(tmp_path, background, sockets, address):
    path = write_cine(tmp_path / "us.dcm", gray_frames(3), SequenceOfUltrasoundRegions=[_region(3, 0.02, 0.025)])
    messages, _ = run_capture(DicomSource(path), background, sockets, address)
    frames = [m for m in messages if isinstance(m, protocol.Frame)]
    # Physical Delta Y is the row pitch, X the column pitch: 0.025 cm, 0.02 cm.
    assert len(frames) == 3 and all(f.spacing == pytest.approx((0.25, 0.2)) for f in frames)
    mp4 = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(mp4), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (40, 32), True)
    assert writer.isOpened(), f"cannot write {mp4}"
    for frame in make_frames(3, 32, 40):
        writer.write(frame)
    writer.release()
    messages, _ = run_capture(open_source(str(mp4)), background, sockets, address)
    frames = [m for m in messages if isinstance(m, protocol.Frame)]
    assert len(frames) == 3 and all(f.spacing is None for f in frames)


def run_capture(source, background, sockets, address, **config):
    addr = address()
    pull = sockets(zmq.PULL, connect=addr)
    task = background(lambda stop: capture(source, CaptureConfig(pub=addr, mode="lossless", fast=True, **config),
                                           stop))
    messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
    return messages, task.join()


@pytest.mark.parametrize("syntax", [ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless],
                         ids=["uncompressed", "rle", "jpeg2000"])
def test_a_truncated_file_delivers_the_frames_before_the_damage_then_ends_in_error(tmp_path, background, sockets,
                                                                                   address, syntax):
    frames = gray_frames(8)
    path = write_cine(tmp_path / "cut.dcm", frames, syntax=syntax)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) - len(data) // 4])
    messages, stats = run_capture(DicomSource(path), background, sockets, address)
    delivered = [m for m in messages if isinstance(m, protocol.Frame)]
    assert 3 <= len(delivered) < 8 and [f.seq for f in delivered] == list(range(len(delivered)))
    for frame in delivered:
        np.testing.assert_array_equal(frame.image(), frames[frame.seq])
    [status] = [m for m in messages if isinstance(m, protocol.Status)]
    assert status.message == (f"DICOM file {path}: ended after {len(delivered)} of 8 frames "
                              "(truncated, or Number of Frames is wrong), left out")
    assert messages[-1].reason == "error" and stats.reason == "error"


def test_a_frame_count_that_disagrees_with_the_data(tmp_path):
    frames = gray_frames(5)
    source = DicomSource(write_cine(tmp_path / "count.dcm", frames, frame_count=8))
    warnings = []
    source.on_warning = warnings.append
    images, _ = frames_of(source)
    np.testing.assert_array_equal(np.stack(images), frames)
    assert source.missing == 3 and len(warnings) == 1 and "ended after 5 of 8 frames" in warnings[0]


def test_a_bad_file_in_a_folder_is_left_out_with_one_warning(tmp_path, caplog):
    folder = tmp_path / "series"
    folder.mkdir()
    write_cine(folder / "1.dcm", gray_frames(3), FrameTime=40)
    write_cine(folder / "2.dcm", gray_frames(1), FrameTime=40)
    ds = pydicom.dcmread(folder / "2.dcm")
    del ds.PixelData
    ds.save_as(folder / "2.dcm")
    with caplog.at_level(logging.WARNING):
        images, _ = frames_of(DicomSource(folder))
    assert len(images) == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"DICOM file {folder / '2.dcm'}: no pixel data (not an image: a report, a structured or raw data set?); "
        f"left out of {folder}"]


# --- privacy and the whole chain -----------------------------------------------------------


def test_no_patient_field_reaches_a_frame_message_or_a_log_line(tmp_path, background, sockets, address, caplog):
    path = write_cine(tmp_path / "exam.dcm", gray_frames(6), frame_count=8, FrameTime=40,
                      PatientBirthDate="19800101", InstitutionName="Secret Hospital")
    addr = address()
    pull = sockets(zmq.PULL, connect=addr)
    with caplog.at_level(logging.DEBUG):
        task = background(lambda stop: capture(DicomSource(path), CaptureConfig(pub=addr, mode="lossless",
                                                                                fast=True), stop))
        raw = []
        while not raw or not isinstance(protocol.decode(raw[-1]), protocol.EndOfStream):
            assert pull.poll(20_000), "no message from the capture"
            raw.append(pull.recv())
        task.join()
    logs = "\n".join(r.getMessage() for r in caplog.records)
    assert str(path) in logs  # the file is named, so the check below looks at real log lines
    everything = b"".join(raw) + logs.encode()
    for secret in (b"Secretname", b"Patientfirst", PATIENT_ID.encode(), b"19800101", b"Secret Hospital"):
        assert secret not in everything


@needs_dcmtk
def test_a_cine_made_by_dcmtk_replays_through_capture_and_worker_with_offline_scores(
        tmp_path, background, sockets, address, tiny_bundle, tiny_runtime):
    rgb = np.stack([f[..., ::-1] for f in make_frames(24, 64, 80, seed=5)])
    plain = write_cine(tmp_path / "plain.dcm", rgb, photometric="RGB", FrameTime=40)
    dcmtk("dcmcjpls", "+el", plain, tmp_path / "exam.dcm")
    frames_addr, scores_addr = address(), address()
    config = WorkerConfig(sub=(frames_addr,), pub=scores_addr, mode="lossless", heartbeat_s=0.2, exit_after_eos=1)
    worker = start_worker(background, tiny_bundle, config)
    sub = sockets(zmq.SUB, connect=scores_addr)
    wait_for_heartbeat(sub)
    source = background(lambda stop: capture(DicomSource(tmp_path / "exam.dcm"), CaptureConfig(
        pub=frames_addr, mode="lossless", fast=True), stop))
    messages = recv_until(sub, lambda m: isinstance(m, protocol.EndOfStream), timeout_s=60)
    scores = [m for m in messages if isinstance(m, protocol.Score)]
    assert [s.seq for s in scores] == list(range(24)) and all(s.stream == "exam" for s in scores)
    expected = offline_scores(tiny_runtime, list(bgr(rgb)))
    np.testing.assert_allclose([s.score for s in scores], expected, atol=1e-5)
    assert messages[-1].reason == "eof" and source.join().frames_out == 24
    assert worker.join().dropped == 0


@pytest.mark.slow
def test_fetalhead_capture_takes_a_dicom_file(tmp_path, sockets, address):
    frames = gray_frames(5)
    path = write_cine(tmp_path / "exam.dcm", frames, FrameTime=40)
    addr = address()
    pull = sockets(zmq.PULL, connect=addr)
    proc = subprocess.Popen([sys.executable, "-m", "tools.cli", "capture", str(path), "--pub", addr,
                             "--mode", "lossless", "--fast"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    try:
        messages = recv_until(pull, lambda m: isinstance(m, protocol.EndOfStream))
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
    finally:
        proc.kill()
        proc.communicate()
    delivered = [m for m in messages if isinstance(m, protocol.Frame)]
    assert [f.seq for f in delivered] == list(range(5)) and delivered[0].stream == "exam"
    np.testing.assert_array_equal(np.stack([f.image() for f in delivered]), frames)
    assert messages[-1].reason == "eof"


def test_a_frame_that_does_not_decode_is_a_gap_in_seq(tmp_path, background, sockets, address):
    frames = gray_frames(6)
    path = write_cine(tmp_path / "patchy.dcm", frames, syntax=RLELossless)
    ds = pydicom.dcmread(path)
    fragments = list(pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=6))
    fragments[2] = b"\xff" * len(fragments[2])  # an RLE header claiming 0xffffffff segments
    ds.PixelData = pydicom.encaps.encapsulate(fragments)
    ds.save_as(path)
    messages, stats = run_capture(DicomSource(path), background, sockets, address)
    delivered = [m for m in messages if isinstance(m, protocol.Frame)]
    assert [f.seq for f in delivered] == [0, 1, 3, 4, 5]
    for frame in delivered:
        np.testing.assert_array_equal(frame.image(), frames[frame.seq])
    [status] = [m for m in messages if isinstance(m, protocol.Status)]
    assert status.message.startswith(f"DICOM file {path}: frame 2 cannot be decoded (")
    assert status.message.endswith("), left out") and stats.reason == "error"


def test_a_training_scan_folder_holding_a_cine_replays_it_under_the_scans_name(tmp_path):
    scan = tmp_path / "scan07"
    scan.mkdir()
    frames = gray_frames(4)
    write_cine(scan / "exam.dcm", frames, FrameTime=50)
    (scan / "labels.csv").write_text("frame,label\n0,Head\n1,Head\n2,Not-Head\n3,Not-Head\n")
    source = open_source(str(scan))
    assert isinstance(source, DicomSource) and source.name == "scan07" and source.fps == pytest.approx(20.0)
    np.testing.assert_array_equal(np.stack(frames_of(source)[0]), frames)
