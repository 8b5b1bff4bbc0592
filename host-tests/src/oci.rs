//! The plugin as an OCI image that Istio (`WasmPlugin`, `url: oci://…`) and Envoy Gateway
//! (`EnvoyExtensionPolicy`, `code.type: Image`) pull, written as an OCI image layout
//! directory (`oci-layout`, `index.json`, `blobs/sha256/`) for `oras cp
//! --from-oci-layout`, `skopeo copy oci:…` or `crane push` to take to a registry.
//!
//! The format is the Wasm image spec's *compat* variant: an ordinary OCI image whose one
//! layer (`application/vnd.oci.image.layer.v1.tar+gzip`) is a tar holding `plugin.wasm`.
//! Both hosts' image fetchers (Istio `pkg/wasm/imagefetcher.go`, Envoy Gateway
//! `internal/wasm/imagefetcher.go`) accept exactly three shapes: a Docker image of that
//! kind, this OCI one, and a two-layer artifact with an
//! `application/vnd.module.wasm.content.layer.v1+wasm` layer. Neither takes the
//! single-layer `application/vnd.wasm.content.layer.v1+wasm` artifact, so that one is not
//! written.
//!
//! The bytes are reproducible: the same `.wasm` gives the same digests (tar and gzip
//! times are zero, owners are root), so a digest pinned in a manifest can be rebuilt.

use std::fs;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// An OCI image manifest.
pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
/// An OCI image index (`index.json`).
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
/// An OCI image configuration.
pub const CONFIG_MEDIA_TYPE: &str = "application/vnd.oci.image.config.v1+json";
/// A gzip-compressed tar layer: the compat variant's one layer.
pub const LAYER_MEDIA_TYPE: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// The file the hosts look for inside the layer.
pub const PLUGIN_FILE: &str = "plugin.wasm";
/// The annotation that names the tag in `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// The Wasm image spec's marker of the compat variant (read by container runtimes
/// that run Wasm; the proxies go by the layer).
pub const VARIANT_ANNOTATION: &str = "module.wasm.image/variant";

/// What [`write_layout`] wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packaged {
    /// `sha256:<hex>` of the manifest: what a registry reference `@sha256:…` names and
    /// what Istio's `sha256` and Envoy Gateway's `image.sha256` check (without the
    /// `sha256:` prefix).
    pub manifest_digest: String,
    pub manifest_size: usize,
    pub tag: String,
}

impl Packaged {
    /// The manifest digest's hex, as the deployment manifests' `sha256` fields want it.
    pub fn sha256_hex(&self) -> &str {
        self.manifest_digest
            .strip_prefix("sha256:")
            .unwrap_or(&self.manifest_digest)
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in hash {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

/// Writes `wasm` as a compat Wasm image in an OCI image layout at `dir` (created; it
/// must not exist or be empty), tagged `tag`.
pub fn write_layout(dir: &Path, wasm: &[u8], tag: &str) -> Result<Packaged> {
    if !wasm.starts_with(b"\0asm") {
        bail!("not a WebAssembly module (no \\0asm header)");
    }
    // The distribution spec's tag grammar: [A-Za-z0-9_][A-Za-z0-9._-]{0,127}.
    let first_ok = tag
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_');
    let rest_ok = tag
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !first_ok || !rest_ok || tag.len() > 128 {
        bail!("{tag:?} is not an OCI tag ([A-Za-z0-9_][A-Za-z0-9._-]{{0,127}})");
    }
    if dir.exists()
        && fs::read_dir(dir)
            .with_context(|| format!("reading {}", dir.display()))?
            .next()
            .is_some()
    {
        bail!(
            "{} exists and is not empty: give a new directory",
            dir.display()
        );
    }
    let blobs = dir.join("blobs").join("sha256");
    fs::create_dir_all(&blobs).with_context(|| format!("creating {}", blobs.display()))?;
    let put = |bytes: &[u8]| -> Result<Value> {
        let digest = digest(bytes);
        let hex = digest.trim_start_matches("sha256:");
        let path = blobs.join(hex);
        fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
        Ok(json!({"digest": digest, "size": bytes.len()}))
    };

    let tar = plugin_tar(wasm)?;
    let layer = gzip(&tar)?;
    let config = serde_json::to_vec(&json!({
        "architecture": "wasm",
        "os": "wasip1",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest(&tar)]},
    }))?;
    let config_descriptor = with_media_type(put(&config)?, CONFIG_MEDIA_TYPE);
    let layer_descriptor = with_media_type(put(&layer)?, LAYER_MEDIA_TYPE);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": config_descriptor,
        "layers": [layer_descriptor],
        "annotations": {VARIANT_ANNOTATION: "compat"},
    }))?;
    let mut manifest_descriptor = with_media_type(put(&manifest)?, MANIFEST_MEDIA_TYPE);
    manifest_descriptor["annotations"] = json!({REF_NAME: tag});
    let index = serde_json::to_vec_pretty(&json!({
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [manifest_descriptor],
    }))?;
    fs::write(dir.join("index.json"), index)?;
    fs::write(
        dir.join("oci-layout"),
        serde_json::to_vec(&json!({"imageLayoutVersion": "1.0.0"}))?,
    )?;
    Ok(Packaged {
        manifest_digest: digest(&manifest),
        manifest_size: manifest.len(),
        tag: tag.to_owned(),
    })
}

fn with_media_type(descriptor: Value, media_type: &str) -> Value {
    let mut out = json!({"mediaType": media_type});
    if let (Some(out), Some(fields)) = (out.as_object_mut(), descriptor.as_object()) {
        out.extend(fields.clone());
    }
    out
}

/// A tar holding `plugin.wasm` (mode 0644, owned by root, time zero).
fn plugin_tar(wasm: &[u8]) -> Result<Vec<u8>> {
    let mut header = tar::Header::new_ustar();
    header.set_size(u64::try_from(wasm.len())?);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    let mut builder = tar::Builder::new(Vec::new());
    builder.append_data(&mut header, PLUGIN_FILE, wasm)?;
    Ok(builder.into_inner()?)
}

/// gzip with no name and time zero in its header, so the bytes depend on the input only.
fn gzip(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut encoder = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes)?;
    Ok(encoder.finish()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_is_not_wasm_and_bad_tags() {
        let dir = tempfile::tempdir().unwrap();
        assert!(write_layout(&dir.path().join("a"), b"ELF", "1").is_err());
        for tag in ["", "-x", ".x", "a/b", "a:b", &"x".repeat(129)] {
            assert!(
                write_layout(&dir.path().join("b"), b"\0asm\x01\0\0\0", tag).is_err(),
                "{tag:?}"
            );
        }
        assert!(write_layout(&dir.path().join("c"), b"\0asm\x01\0\0\0", "_0.1-rc.1").is_ok());
    }

    #[test]
    fn refuses_a_directory_with_something_in_it() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("x"), b"").unwrap();
        let err = write_layout(dir.path(), b"\0asm\x01\0\0\0", "1").unwrap_err();
        assert!(err.to_string().contains("not empty"), "{err}");
    }
}
