"""The one typed settings object of mammoxai.

Loaded from a TOML file (``mammoxai --config FILE``) and overridden by
``MAMMOXAI_*`` environment variables, nested with ``__``
(``MAMMOXAI_NODE__PORT=11113``, ``MAMMOXAI_EXPLAINERS__ENABLED='["gradcam","lrp"]'``).
Every field has a default that runs out of the box on the bundled demo model.
This module imports neither torch nor pydicom, so every layer may use it.
"""

from __future__ import annotations

import contextvars
import ipaddress
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # DICOM AE VR: 16 chars, no backslash/control


def _check_ae_title(value: str) -> str:
    stripped = value.strip()
    if not stripped or not _AE_TITLE.match(value):
        raise ValueError(f"{value!r} is not a valid AE title (1-16 printable characters, no backslash)")
    return stripped


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TlsSettings(_Section):
    """DICOM TLS (PS3.15 Annex B, the 'BCP 195' secure transport profile)."""

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    ca_file: Path | None = Field(default=None, description="CA bundle used to verify the peer's certificate")
    require_client_cert: bool = False

    @model_validator(mode="after")
    def _files_present(self) -> "TlsSettings":
        if self.enabled and (self.cert_file is None or self.key_file is None):
            raise ValueError("tls.enabled needs cert_file and key_file")
        if self.require_client_cert and self.ca_file is None:
            raise ValueError("tls.require_client_cert needs ca_file to verify client certificates")
        return self


class NodeSettings(_Section):
    """The Storage SCP that the PACS sends mammograms to."""

    ae_title: str = "MAMMOXAI"
    host: str = Field(default="127.0.0.1", description="address to bind; 0.0.0.0 to accept from the network")
    port: int = Field(default=11112, ge=1, le=65535)
    allowed_calling_aes: list[str] = Field(default_factory=list, description="empty: any calling AE title")
    allowed_addresses: list[str] = Field(default_factory=list, description="IPs or CIDRs; empty: any address")
    spool_dir: Path = Path("mammoxai-spool")
    max_associations: int = Field(default=8, ge=1, le=256)
    max_pdu_size: int = Field(default=16382, ge=0, description="0: unlimited")
    max_dataset_mb: float = Field(default=512.0, gt=0, description="larger C-STOREs are refused (A700) while "
                                  "they arrive; the received part is discarded")
    max_pixel_data_mb: float = Field(
        default=128.0, gt=0, description="decoded image cap, Rows x Columns x Samples x Bits Allocated/8 x Frames "
        "(the largest real MG, 5928 x 4728 x 16 bit, is 54 MiB); checked on the header, by the SCP (A700) and again "
        "before any pixel decode")
    max_inflated_mb: float = Field(default=512.0, gt=0, description="Deflated Explicit VR Little Endian: inflated "
                                   "data set cap, inflated in bounded chunks (A700 beyond it)")
    connect_timeout_s: float = Field(default=10.0, gt=0, description="a new connection's TLS handshake and "
                                     "A-ASSOCIATE-RQ must arrive within this, else it is closed")
    max_connections_per_peer: int = Field(default=8, ge=1, description="open connections from one source address "
                                          "(associated or not); more are closed at accept")
    check_called_ae: bool = Field(default=True, description="reject associations whose called AE title is not "
                                  "node.ae_title; false: any called AE title")
    job_budget_s: float = Field(default=3600.0, gt=0, description="/healthz is degraded while a job runs longer")
    destination_alert_s: float = Field(default=600.0, gt=0, description="/healthz is degraded once the "
                                       "destination has failed for longer than this")
    disk_free_watermark_mb: float = Field(default=1024.0, ge=0, description="refuse C-STORE (A700) and claim "
                                          "no new work below this")
    study_quiet_seconds: float = Field(default=30.0, ge=0, description="a study's summary SR is made once it "
                                       "has received nothing for this long (whatever else is queued)")
    workers: int = Field(default=1, ge=1, le=64, description="jobs processed in parallel, each worker with its "
                         "own model copy and explainers (on a GPU: one model copy per worker in GPU memory)")
    max_process_attempts: int = Field(default=3, ge=1, description="claims (pipeline errors or the process dying "
                                      "while running it) before a job is 'failed'")
    batch_images: int = Field(default=4, ge=1, description="images a worker batches when several are waiting")
    job_store: Literal["sqlite", "redis"] = Field(
        default="sqlite", description="'sqlite': the queue in the spool (one node process); 'redis': Redis "
        "Streams at node.broker_url, shared by `serve --role scp` and `serve --role worker` processes")
    broker_url: str = Field(default="redis://127.0.0.1:6379/0", description="node.job_store = 'redis': "
                            "redis://[:password@]host:port/db (rediss:// for TLS)")
    broker_lease_s: float = Field(default=60.0, gt=0, description="a job (or delivery, or study summary) held by "
                                  "a process that stopped renewing it is taken over by another after this")
    consumer_name: str | None = Field(default=None, description="this process in the broker's consumer group; "
                                      "unique per live process (default: HOST-PID)")
    http_host: str = "127.0.0.1"
    http_port: int = Field(default=8765, ge=0, le=65535, description="/healthz and /metrics; 0 disables")
    log_phi: bool = Field(default=False, description="log patient names/IDs (default: UIDs only)")
    tls: TlsSettings = Field(default_factory=TlsSettings)

    _check_ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("allowed_calling_aes")
    @classmethod
    def _check_aes(cls, values: list[str]) -> list[str]:
        return [_check_ae_title(v) for v in values]

    @field_validator("allowed_addresses")
    @classmethod
    def _check_networks(cls, values: list[str]) -> list[str]:
        for v in values:
            ipaddress.ip_network(v, strict=False)
        return values


class DestinationSettings(_Section):
    """Where results go: a DICOM node (C-STORE SCU), a DICOMweb STOW-RS URL, or a folder."""

    kind: Literal["dicom", "dicomweb", "folder"] = "folder"
    ae_title: str = "ORTHANC"
    host: str = "127.0.0.1"
    port: int = Field(default=4242, ge=1, le=65535)
    calling_ae_title: str | None = Field(default=None, description="default: node.ae_title")
    folder: Path = Path("mammoxai-out")
    url: str | None = Field(default=None, description="DICOMweb base URL for kind = 'dicomweb'")
    max_attempts: int = Field(default=8, ge=1)
    backoff_initial_s: float = Field(default=2.0, gt=0)
    backoff_max_s: float = Field(default=300.0, gt=0)
    timeout_s: float = Field(default=30.0, gt=0)
    tls: TlsSettings = Field(default_factory=TlsSettings)

    _check_ae = field_validator("ae_title")(_check_ae_title)

    @model_validator(mode="after")
    def _url_for_dicomweb(self) -> "DestinationSettings":
        if self.kind == "dicomweb" and not self.url:
            raise ValueError("destination.url is required when destination.kind = 'dicomweb'")
        return self


class ModelSettings(_Section):
    """The classifier. Values left empty come from the checkpoint's metadata."""

    checkpoint: Path | None = Field(default=None, description="empty: the bundled demo CNN")
    architecture: str | None = Field(default=None, description="timm name; must match the checkpoint's")
    input_size: tuple[int, int] | None = None
    class_names: list[str] | None = None
    positive_class: str = "malignant"
    device: str = Field(default="auto", description="'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:N'")
    autocast: Literal["off", "fp16", "bf16"] = Field(default="off", description="CUDA only")
    out_of_domain: Literal["label", "withhold", "off"] = Field(
        default="label", description="an image outside the checkpoint's domain record: 'label' shows the "
        "prediction with a caution, 'withhold' does not show it, 'off' does not check (domain not checked)")

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?|mps", value):
            raise ValueError("allowed values: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'")
        return value


ExplainerProfile = Literal["fast", "full", "custom"]

#: The explainers each profile runs. "fast" fits a CPU; "full" runs everything
#: with the sample counts the literature uses (see ``PROFILE_PARAMS``).
PROFILE_METHODS: dict[str, list[str]] = {
    "fast": ["gradcam", "lrp", "integrated_gradients", "occlusion"],
    "full": [
        "saliency", "gradient_x_input", "integrated_gradients", "smoothgrad", "guided_backprop",
        "deeplift", "gradcam", "gradcam_pp", "hirescam", "xgradcam", "layercam", "scorecam", "eigencam",
        "guided_gradcam", "lrp", "occlusion", "rise", "lime", "kernel_shap",
    ],
}
PROFILE_PARAMS: dict[str, dict[str, dict[str, Any]]] = {
    "fast": {"integrated_gradients": {"steps": 16}, "occlusion": {"patch": 32, "stride": 32}},
    "full": {
        "integrated_gradients": {"steps": 64}, "smoothgrad": {"samples": 50}, "rise": {"n_masks": 4000},
        "lime": {"samples": 1000}, "kernel_shap": {"samples": 1000}, "occlusion": {"patch": 16, "stride": 8},
    },
}

#: Deletion/insertion curve steps per profile (``explainers.quality_steps`` overrides). The curves are
#: ``2 + maps·2·(steps − 1)`` forward passes per image, as many as the fast profile's four maps themselves
#: at 10 steps; 10 steps resolve an AUC to 1/10 of the pixels, which is what the SR reports (3 figures).
PROFILE_QUALITY_STEPS: dict[str, int] = {"fast": 10, "full": 20, "custom": 20}


class ExplainerSettings(_Section):
    """Which explainers run and each one's parameters (``[explainers.params.NAME]``)."""

    profile: ExplainerProfile = "fast"
    enabled: list[str] | None = Field(default=None, description="explicit list; default: the profile's")
    params: dict[str, dict[str, Any]] = Field(default_factory=dict)
    batch_size: int = Field(default=16, ge=1, description="forward-pass budget shared by sampled methods")
    seed: int = 0
    target: Literal["predicted", "positive"] = Field(
        default="predicted", description="explain the predicted class, or always the positive (malignant) class")
    time_budget_s: float = Field(default=300.0, gt=0, description="per explainer, per image")
    stability_target: float = Field(
        default=0.95, ge=0, lt=1,
        description="sampled methods (SmoothGrad family, RISE, LIME, Kernel SHAP) draw more samples until the "
                    "map's split-half stability reaches this, their max_samples or the time budget; a map "
                    "below it carries a caution; 0: the configured sample counts only, no caution")
    quality: bool = Field(default=True, description="compute quality scores for every map")
    quality_steps: int | None = Field(
        default=None, ge=2, description="deletion/insertion curve steps; default: the profile's "
        "(PROFILE_QUALITY_STEPS: 10 in 'fast', 20 in 'full' and 'custom')")
    quality_baseline: Literal["blur", "mean", "zero"] = "blur"
    sensitivity_samples: int = Field(
        default=2, ge=0, description="noisy re-runs per map for max-sensitivity; 0 disables it")
    sensitivity_methods: list[str] | Literal["auto", "all"] = Field(
        default="auto",
        description="methods whose maps get max-sensitivity: 'auto' = every method on a GPU, all but the "
                    "methods that take many model passes per map (Integrated Gradients, the SmoothGrad family, "
                    "Score-CAM, occlusion, RISE, LIME, Kernel SHAP, the attacks: each re-run costs as much as the "
                    "map) on a CPU")
    sanity: Literal["exclude", "label", "off"] = Field(
        default="exclude",
        description="methods whose map fails the checkpoint's model-randomisation check (mammoxai sanity --write): "
                    "'exclude' does not run them, 'label' runs them and marks their outputs, 'off' ignores the check")

    def methods(self) -> list[str]:
        if self.enabled is not None:
            return list(self.enabled)
        if self.profile == "custom":
            raise ValueError("explainers.profile = 'custom' needs explainers.enabled")
        return list(PROFILE_METHODS[self.profile])

    def curve_steps(self) -> int:
        """Deletion/insertion curve steps: ``quality_steps`` when set, else the profile's."""
        return self.quality_steps if self.quality_steps is not None else PROFILE_QUALITY_STEPS[self.profile]

    def parameters_for(self, method: str) -> dict[str, Any]:
        merged = dict(PROFILE_PARAMS.get(self.profile, {}).get(method, {}))
        merged.update(self.params.get(method, {}))
        return merged


class OutputSettings(_Section):
    """Which DICOM objects are emitted and how (all in the source study, one new series per kind)."""

    secondary_capture: bool = True
    sc_methods: list[str] | Literal["auto", "all"] = Field(
        default="auto", description="'auto': gradcam, lrp, integrated_gradients (+ lime on a GPU)")
    montage: bool = True
    sc_max_size: int | Literal["original"] = Field(default=2048, description="long side in px, or 'original'")
    sc_compression: Literal["none", "jpeg_baseline"] = Field(
        default="jpeg_baseline", description="SC pixels: JPEG baseline (lossy, Lossy Image Compression 01) or "
        "'none' (uncompressed, lossless); default results of one source fit in its own size (BENCHMARKS.md)")
    colormap: str = "inferno"
    structured_report: bool = True
    segmentation: bool = True
    gsps: bool = True
    hot_region_threshold: float = Field(default=0.5, gt=0, lt=1, description="fraction of the map's maximum")
    max_regions_per_method: int = Field(default=3, ge=1)
    series_number_base: int = Field(default=9100, ge=1, le=2**31 - 1000)
    manufacturer: str = "mammoxai"
    institution_name: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _no_parametric_map(cls, data: Any) -> Any:
        if isinstance(data, dict) and "parametric_map" in data:
            raise ValueError("parametric_map is not a setting: the Parametric Map IOD needs a Frame of Reference, "
                             "which a projection mammogram does not have; the SEG carries the maps")
        return data

    @field_validator("sc_max_size")
    @classmethod
    def _check_size(cls, value: int | str) -> int | str:
        if isinstance(value, int) and value < 256:
            raise ValueError("sc_max_size must be >= 256 px or 'original'")
        return value


class Settings(BaseSettings):
    """All of mammoxai's settings; see ``docs``/README for the TOML layout."""

    model_config = SettingsConfigDict(
        env_prefix="MAMMOXAI_", env_nested_delimiter="__", extra="forbid", validate_assignment=True,
    )

    node: NodeSettings = Field(default_factory=NodeSettings)
    destination: DestinationSettings = Field(default_factory=DestinationSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    explainers: ExplainerSettings = Field(default_factory=ExplainerSettings)
    output: OutputSettings = Field(default_factory=OutputSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _TomlSource(settings_cls)


_TOML_DATA: contextvars.ContextVar[dict[str, Any]] = contextvars.ContextVar("mammoxai_toml", default={})


class _TomlSource(PydanticBaseSettingsSource):
    """The TOML file's contents, below environment variables in priority."""

    def get_field_value(self, field, field_name):  # pragma: no cover - __call__ is used
        return _TOML_DATA.get().get(field_name), field_name, False

    def __call__(self) -> dict[str, Any]:
        return dict(_TOML_DATA.get())
