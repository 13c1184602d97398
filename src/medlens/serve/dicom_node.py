"""The DICOM node (``medlens dicom-node``): a PACS sends images, the node sends results back.

A C-STORE SCP (pynetdicom) accepts instances of every storage class in every transfer syntax
and spools each to disk as it arrives (``spool/incoming/<series>/<instance>.dcm``, written
atomically). A series is complete once the association delivering it has closed and
``settle_s`` seconds have passed since its last instance, as informatics gateways decide it (or
after a minute idle, for a sender that keeps its association open). One worker thread then
moves it aside, predicts it through the platform's predictor
(:meth:`medlens.tasks.base.Predictor.dicom_results`, which reads it as ``medlens predict``
does), and sends the results (a DICOM SEG or Structured Report in the source's study)
to the PACS by C-STORE or, with a DICOMweb address, by STOW-RS.

What the node cannot take is logged and skipped, never fatal: series without pixels (SR, SEG,
presentation states: among them the node's own results, when a PACS routes everything back),
modalities the model was not trained on, series the model refuses (a single slice to a 3D
model). Results that cannot be sent stay in ``spool/unsent/`` after three tries. A node
restarted on the same ``--spool`` queues the series it had received but not processed.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medlens.errors import MedlensError
from medlens.io.dicomweb import NO_PIXELS, parse_dicomweb
from medlens.io.dicomweb import store as stow

__all__ = ["DicomNode", "NodeSettings", "Peer", "dicom_modalities", "parse_peer"]

logger = logging.getLogger("medlens.dicom_node")
UID = re.compile(r"^[0-9][0-9.]{0,63}$")
SUCCESS, CANNOT_UNDERSTAND, OUT_OF_RESOURCES = 0x0000, 0xC000, 0xA700
IDLE_S = 60.0  # a series idle this long is complete even if its association stays open
#: the DICOM modality of the modality names datasets give (Decathlon's ``"MRI"``, ``"T1"``...)
MODALITY_OF = {
    "CT": "CT",
    "MR": "MR",
    "MRI": "MR",
    "T1": "MR",
    "T2": "MR",
    "FLAIR": "MR",
    "T1W": "MR",
    "T2W": "MR",
    "ADC": "MR",
    "DWI": "MR",
    "PD": "MR",
    "US": "US",
    "PT": "PT",
    "PET": "PT",
    "CR": "CR",
    "DX": "DX",
    "MG": "MG",
    "XA": "XA",
}


@dataclass(frozen=True)
class Peer:
    """A DICOM application entity: AE title, host and port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_peer(text: str) -> Peer:
    """``AET@HOST:PORT`` parsed (``ORTHANC@127.0.0.1:4242``).

    Raises:
        MedlensError: another form, an AE title over 16 characters, or a bad port.
    """
    match = re.fullmatch(r"([^@]{1,16})@([^:]+|\[[^\]]+\]):(\d{1,5})", text.strip())
    if match is None or not 0 < int(match[3]) < 65536:
        raise MedlensError(f"--send-to {text!r}: expected AET@HOST:PORT, e.g. PACS@10.0.0.5:104")
    return Peer(match[1], match[2].strip("[]"), int(match[3]))


def dicom_modalities(text: str | None) -> frozenset[str] | None:
    """The DICOM modalities a run's recorded modality (or a comma list) stands for; None: any."""
    if not text:
        return None
    found = {MODALITY_OF.get(part.strip().upper()) for part in text.split(",")}
    return None if None in found else frozenset(m for m in found if m)


@dataclass
class NodeSettings:
    """``medlens dicom-node``'s options (see its ``--help``)."""

    ae_title: str = "MEDLENS"
    host: str = "127.0.0.1"
    port: int = 11112
    send_to: Peer | None = None
    dicomweb: str | None = None
    settle_s: float = 5.0
    modalities: frozenset[str] | None = None
    spool: Path | None = None
    keep: Path | None = None  # a copy of every result written here too


@dataclass
class _Series:
    uid: str
    modality: str
    study: str
    instances: int = 0
    last: float = field(default_factory=time.monotonic)
    senders: set[int] = field(default_factory=set)  # open associations delivering it

    def complete(self, now: float, settle: float) -> bool:
        """No association is still delivering it and ``settle`` seconds have passed since the
        last instance (or since its association closed); or it has been idle for a minute."""
        idle = now - self.last
        return (not self.senders and idle >= settle) or idle >= max(settle, IDLE_S)


class DicomNode:
    """A running node: :meth:`start` it, :meth:`stop` it; :attr:`history` records each series.

    Args:
        predictor: a loaded platform predictor (:func:`medlens.tasks.registry.load_predictor`).
        settings: where to listen and where results go.
        model_name, model_version: recorded in every result object.
        log: called with one line per event (series received, skipped, sent).
    """

    def __init__(
        self,
        predictor: Any,
        settings: NodeSettings,
        *,
        model_name: str,
        model_version: str,
        log: Callable[[str], Any] = logger.info,
    ) -> None:
        if settings.send_to is None and settings.dicomweb is None and settings.keep is None:
            raise MedlensError("the node needs somewhere to send results: --send-to or --dicomweb")
        # a bad address fails now, not at the first series
        self._stow_to = parse_dicomweb(settings.dicomweb) if settings.dicomweb else None
        self.predictor, self.settings, self.log = predictor, settings, log
        self.context = {"model_name": model_name, "model_version": model_version}
        self._own_spool = settings.spool is None
        self.spool = Path(settings.spool or tempfile.mkdtemp(prefix="medlens-node-"))
        for part in ("incoming", "partial", "work", "unsent"):
            (self.spool / part).mkdir(parents=True, exist_ok=True)
        self.history: list[dict[str, Any]] = []
        self._series: dict[str, _Series] = {}
        self._ignored: set[str] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._busy = threading.Event()
        self._server = None
        self._worker: threading.Thread | None = None

    # ------------------------------------------------------------------ running
    def start(self) -> None:
        """Listen (in pynetdicom's threads) and start the worker; returns at once."""
        from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.settings.ae_title)
        ae.require_called_aet = True
        for context in AllStoragePresentationContexts:
            ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 0  # no limit on what the peer sends
        handlers = [
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_C_ECHO, lambda event: SUCCESS),
            (evt.EVT_RELEASED, self._on_closed),
            (evt.EVT_ABORTED, self._on_closed),
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        try:
            self._server = ae.start_server(
                (self.settings.host, self.settings.port), block=False, evt_handlers=handlers
            )
        except OSError as exc:
            raise MedlensError(
                f"cannot listen on {self.settings.host}:{self.settings.port}: {exc.strerror}"
            ) from None
        self._resume()
        self._worker = threading.Thread(target=self._work, name="medlens-node", daemon=True)
        self._worker.start()

    def _resume(self) -> None:
        """Series a stopped node had received but not processed (``--spool``) are queued."""
        import pydicom

        for folder in sorted((self.spool / "incoming").iterdir()):
            files = sorted(folder.glob("*.dcm"))
            if not folder.is_dir() or not files:
                continue
            try:
                ds = pydicom.dcmread(files[0], stop_before_pixels=True)
                modality, study = str(ds.get("Modality", "")), str(ds.get("StudyInstanceUID", ""))
            except Exception:
                modality = study = ""
            self._series[folder.name] = _Series(folder.name, modality, study, len(files))
            self.log(f"series {folder.name}: {len(files)} instances left from before, queued")

    @property
    def port(self) -> int:
        """The port listened on (the one the system chose for ``port=0``)."""
        assert self._server is not None, "start the node first"
        return int(self._server.server_address[1])

    def stop(self) -> None:
        """Stop listening and working; an own temporary spool is removed (but ``unsent/``)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._worker is not None:
            self._worker.join(60)
        if self._own_spool and not any((self.spool / "unsent").iterdir()):
            shutil.rmtree(self.spool, ignore_errors=True)

    def serve_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no series is pending or being processed (tests, benchmarks)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                pending = bool(self._series)
            if not pending and not self._busy.is_set():
                return True
            time.sleep(0.05)
        return False

    # ------------------------------------------------------------------ receiving
    def _on_store(self, event) -> int:
        try:
            ds = event.dataset
            series, sop = str(ds.get("SeriesInstanceUID", "")), str(ds.get("SOPInstanceUID", ""))
            modality = str(ds.get("Modality", "")).upper()
            study = str(ds.get("StudyInstanceUID", ""))
            has_pixels = any(tag in ds for tag in ("PixelData", "FloatPixelData"))
        except Exception as exc:  # a dataset pydicom cannot parse
            self.log(f"refused an instance from {_calling(event)}: unreadable ({exc})")
            return CANNOT_UNDERSTAND
        if not UID.match(series) or not UID.match(sop):
            self.log(f"refused an instance from {_calling(event)}: no valid Series/SOP UID")
            return CANNOT_UNDERSTAND
        reason = self._unwanted(modality, has_pixels)
        if reason is not None:
            if series not in self._ignored:
                self._ignored.add(series)
                self.log(f"series {series} ({modality or 'no modality'}): skipped, {reason}")
            return SUCCESS  # accepted and left alone: a PACS routing everything sees no failure
        folder = self.spool / "incoming" / series
        temporary = self.spool / "partial" / f"{sop}.{threading.get_ident()}.part"
        try:
            temporary.write_bytes(event.encoded_dataset(include_meta=True))
            # into the series' folder and its count together: the worker takes both at once
            with self._lock:
                folder.mkdir(parents=True, exist_ok=True)
                os.replace(temporary, folder / f"{sop}.dcm")
                entry = self._series.setdefault(series, _Series(series, modality, study))
                entry.instances += 1
                entry.last = time.monotonic()
                entry.senders.add(id(event.assoc))
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            self.log(f"series {series}: cannot spool instance {sop}: {exc.strerror}")
            return OUT_OF_RESOURCES
        return SUCCESS

    def _on_closed(self, event) -> None:
        """An association ended: the series it delivered settle from now."""
        with self._lock:
            for entry in self._series.values():
                if id(event.assoc) in entry.senders:
                    entry.senders.discard(id(event.assoc))
                    entry.last = time.monotonic()

    def _unwanted(self, modality: str, has_pixels: bool) -> str | None:
        if modality in NO_PIXELS or not has_pixels:
            return "it holds no image"
        allowed = self.settings.modalities
        if allowed is not None and modality not in allowed:
            return f"the model takes {', '.join(sorted(allowed))}"
        return None

    # ------------------------------------------------------------------ working
    def _work(self) -> None:
        while not self._stop.wait(0.1):
            now = time.monotonic()
            taken = []
            with self._lock:
                ready = [
                    s for s in self._series.values() if s.complete(now, self.settings.settle_s)
                ]
                for series in ready:
                    # late instances of this series start a new folder, and a new series job
                    del self._series[series.uid]
                    work = Path(tempfile.mkdtemp(prefix="series-", dir=self.spool / "work"))
                    try:
                        os.replace(self.spool / "incoming" / series.uid, work / "series")
                    except OSError as exc:  # its folder gone from the spool: nothing to do
                        self.log(f"series {series.uid}: skipped, not in the spool ({exc.strerror})")
                        shutil.rmtree(work, ignore_errors=True)
                        continue
                    taken.append((series, work))
                    self._busy.set()
            for series, work in taken:
                try:
                    self._process(series, work)
                except Exception as exc:  # never let one series stop the node
                    self.log(f"series {series.uid}: failed: {exc}")
            if taken:
                self._busy.clear()

    def _process(self, series: _Series, work: Path) -> None:
        started = time.monotonic()
        record: dict[str, Any] = {
            "series": series.uid,
            "study": series.study,
            "modality": series.modality,
            "instances": series.instances,
            "settled_s": started - series.last,
        }
        try:
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    results = self.predictor.dicom_results(
                        work / "series", work / "out", **self.context
                    )
                for warning in caught:  # the model's cautions go to the node's log
                    self.log(f"series {series.uid}: warning: {warning.message}")
            except Exception as exc:
                reason = str(exc).replace(str(work / "series"), "series").splitlines()[0]
                self.log(
                    f"series {series.uid} ({series.modality}, {series.instances} "
                    f"instances): skipped, the model cannot take it: {reason}"
                )
                self.history.append({**record, "status": "skipped", "reason": reason})
                return
            predicted = time.monotonic()
            where = self._send(series, results)
            kinds = sorted({p.name.rsplit(".", 2)[-2].upper() for p in results})
            self.log(
                f"series {series.uid} ({series.modality}, {series.instances} instances): "
                f"{len(results)} {'/'.join(kinds)} sent to {where} "
                f"in {time.monotonic() - started:.1f} s"
            )
            self.history.append(
                {
                    **record,
                    "status": "sent",
                    "results": len(results),
                    "predict_s": predicted - started,
                    "total_s": time.monotonic() - started,
                }
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _send(self, series: _Series, results: list[Path]) -> str:
        if self.settings.keep is not None:
            self.settings.keep.mkdir(parents=True, exist_ok=True)
            for path in results:
                shutil.copy2(path, self.settings.keep / path.name)
        if self._stow_to is None and self.settings.send_to is None:
            return str(self.settings.keep)
        for attempt in range(3):
            if attempt:
                time.sleep(0.5 * 2**attempt)
            try:
                if self._stow_to is not None:
                    stow(self._stow_to, results)
                    return str(self._stow_to)
                assert self.settings.send_to is not None
                send_c_store(results, self.settings.send_to, self.settings.ae_title)
                return str(self.settings.send_to)
            except MedlensError as exc:
                self.log(f"series {series.uid}: sending failed (try {attempt + 1} of 3): {exc}")
        kept = self.spool / "unsent" / series.uid
        kept.mkdir(parents=True, exist_ok=True)
        for path in results:
            shutil.move(str(path), kept / path.name)
        raise MedlensError(f"results not sent; kept in {kept}")


def send_c_store(files: list[Path], peer: Peer, calling_ae: str = "MEDLENS") -> None:
    """Send DICOM files to ``peer`` in one association (C-STORE SCU).

    Raises:
        MedlensError: the association refused or failed, or an instance not stored.
    """
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
    from pynetdicom import AE

    datasets = [pydicom.dcmread(f) for f in files]
    ae = AE(ae_title=calling_ae)
    ae.dimse_timeout = 120  # a busy PACS (or node) may take its time to answer
    syntaxes: dict[str, set[str]] = {}
    for ds in datasets:  # each instance goes in its own transfer syntax (JPEG 2000 stays so)
        own = syntaxes.setdefault(str(ds.SOPClassUID), set())
        own.add(str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian)))
    for sop_class, own in sorted(syntaxes.items()):
        for syntax in sorted(own | {ExplicitVRLittleEndian, ImplicitVRLittleEndian}):
            ae.add_requested_context(sop_class, [syntax])
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    if not assoc.is_established:
        raise MedlensError(f"{peer}: association refused or not reachable")
    try:
        for ds, path in zip(datasets, files, strict=True):
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None or code not in (0x0000, 0xB000, 0xB006, 0xB007):
                shown = "no answer" if code is None else f"status 0x{code:04X}"
                raise MedlensError(f"{peer}: did not store {path.name} ({shown})")
    finally:
        if assoc.is_established:
            assoc.release()


def _calling(event) -> str:
    try:
        return str(event.assoc.requestor.ae_title).strip() or "?"
    except Exception:
        return "?"
