"""The model registry: models, versions, one artifact per (version, profile), lineage and stages.

An uploaded bundle registers itself: its manifest names the model, version, profile and the
source model's SHA-256, and carries the conversion/parity summary. Lineage is therefore
"source sha256 → artifact sha256s" per version. Stages move draft → released → deprecated
(and back from deprecated to released); only released versions can be rolled out.
Does not serve files (``http_api``) nor verify signatures (devices do that).
"""

from __future__ import annotations

import json
import tarfile
import time
from pathlib import Path

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, UniqueConstraint, select
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Mapped, Session, mapped_column

from edgekit.core import bundle
from edgekit.core.errors import BundleError, UsageError

from .db import Base

STAGES = ("draft", "released", "deprecated")
ALLOWED = {("draft", "released"), ("released", "deprecated"), ("deprecated", "released"), ("draft", "deprecated")}


class ModelVersion(Base):
    __tablename__ = "model_versions"
    __table_args__ = (UniqueConstraint("model", "version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model: Mapped[str] = mapped_column(String(128), index=True)
    version: Mapped[str] = mapped_column(String(64))
    stage: Mapped[str] = mapped_column(String(16), default="draft")
    source_sha256: Mapped[str | None] = mapped_column(String(64))
    created: Mapped[float] = mapped_column(Float)


class ModelArtifact(Base):
    __tablename__ = "model_artifacts"
    __table_args__ = (UniqueConstraint("version_id", "profile"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"), index=True)
    profile: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    length: Mapped[int] = mapped_column(Integer)
    release: Mapped[int] = mapped_column(Integer)
    manifest: Mapped[dict] = mapped_column(JSON)


def read_manifest(path: Path) -> dict | None:
    """The manifest of an uploaded file if it is a bundle, else None (plain artifacts are allowed)."""
    try:
        with tarfile.open(path, "r:") as tar:
            member = tar.extractfile(bundle.MANIFEST_MEMBER)
            return bundle.validate_manifest(json.loads(member.read())) if member else None
    except (tarfile.TarError, KeyError, ValueError, OSError, BundleError):
        return None


def register(engine: Engine, manifest: dict, sha256: str, length: int) -> dict:
    """Record the bundle's model version (draft if new) and its artifact for the bundle's profile."""
    m = manifest["model"]
    with Session(engine) as s, s.begin():
        ver = s.scalar(select(ModelVersion).where(ModelVersion.model == m["name"], ModelVersion.version == m["version"]))
        if ver is None:
            ver = ModelVersion(model=m["name"], version=m["version"], stage="draft",
                               source_sha256=m.get("source_sha256"), created=time.time())
            s.add(ver)
            s.flush()
        art = s.scalar(select(ModelArtifact).where(ModelArtifact.version_id == ver.id,
                                                   ModelArtifact.profile == manifest["profile"]))
        if art is None:
            art = ModelArtifact(version_id=ver.id, profile=manifest["profile"])
            s.add(art)
        art.sha256, art.length, art.release, art.manifest = sha256, length, m["release"], manifest
    return {"model": m["name"], "version": m["version"], "profile": manifest["profile"]}


def _version_dict(s: Session, v: ModelVersion, base_url: str = "") -> dict:
    arts = s.scalars(select(ModelArtifact).where(ModelArtifact.version_id == v.id).order_by(ModelArtifact.profile))
    return {"model": v.model, "version": v.version, "stage": v.stage, "created": v.created,
            "lineage": {"source_sha256": v.source_sha256},
            "artifacts": [{"profile": a.profile, "sha256": a.sha256, "length": a.length, "release": a.release,
                           "precision": a.manifest.get("precision"), "engine": a.manifest.get("engine"),
                           "url": f"{base_url}/artifacts/{a.sha256}.bundle",
                           "conversion_report": {"parity": a.manifest.get("parity") or {},
                                                 "budgets": a.manifest.get("budgets") or {}}}
                          for a in arts]}


def list_models(engine: Engine) -> list[dict]:
    with Session(engine) as s:
        out: dict[str, dict] = {}
        for v in s.scalars(select(ModelVersion).order_by(ModelVersion.model, ModelVersion.created)):
            row = out.setdefault(v.model, {"model": v.model, "versions": [], "released": None})
            row["versions"].append({"version": v.version, "stage": v.stage})
            if v.stage == "released":
                row["released"] = v.version
        return list(out.values())


def show_model(engine: Engine, model: str, base_url: str = "") -> dict:
    with Session(engine) as s:
        vers = list(s.scalars(select(ModelVersion).where(ModelVersion.model == model).order_by(ModelVersion.created)))
        if not vers:
            raise UsageError(f"unknown model {model!r}", hint="`edgekit models ls` lists the registered models; "
                             "upload a bundle with `edgekit push` or POST /api/v1/artifacts.")
        return {"model": model, "versions": [_version_dict(s, v, base_url) for v in vers]}


def set_stage(engine: Engine, model: str, version: str, stage: str) -> dict:
    if stage not in STAGES:
        raise UsageError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}", hint="e.g. `edgekit models stage MODEL@VERSION released`.")
    with Session(engine) as s, s.begin():
        v = s.scalar(select(ModelVersion).where(ModelVersion.model == model, ModelVersion.version == version))
        if v is None:
            raise UsageError(f"unknown model version {model}@{version}", hint="`edgekit models show MODEL` lists versions.")
        if v.stage != stage and (v.stage, stage) not in ALLOWED:
            raise UsageError(f"{model}@{version} cannot move from {v.stage} to {stage}",
                             hint="Stages go draft → released → deprecated (a deprecated version may be released again).")
        v.stage = stage
    return {"model": model, "version": version, "stage": stage}


def artifacts_for(engine: Engine, model: str, version: str) -> tuple[str, dict[str, dict]]:
    """(stage, profile → {sha256, length, manifest}) of one version; UsageError if unknown."""
    with Session(engine) as s:
        v = s.scalar(select(ModelVersion).where(ModelVersion.model == model, ModelVersion.version == version))
        if v is None:
            raise UsageError(f"unknown model version {model}@{version}",
                             hint="Upload its bundles first (`edgekit push` or POST /api/v1/artifacts); "
                                  "`edgekit models ls` lists what the registry has.")
        arts = s.scalars(select(ModelArtifact).where(ModelArtifact.version_id == v.id))
        return v.stage, {a.profile: {"sha256": a.sha256, "length": a.length, "manifest": a.manifest,
                                     "release": a.release} for a in arts}


def newest_releases(engine: Engine, model: str, *, besides: str | None = None) -> dict[str, int]:
    """profile → the highest release counter the registry holds for ``model`` (on any version but
    ``besides``): the anti-rollback floor a device of that profile may have reached."""
    with Session(engine) as s:
        q = (select(ModelArtifact.profile, ModelArtifact.release, ModelVersion.version)
             .join(ModelVersion, ModelVersion.id == ModelArtifact.version_id).where(ModelVersion.model == model))
        out: dict[str, int] = {}
        for profile, release, version in s.execute(q):
            if version != besides:
                out[profile] = max(out.get(profile, 0), release)
        return out
