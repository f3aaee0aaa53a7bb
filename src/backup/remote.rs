//! Backups in an S3-compatible object store: `BACKUP … TO URL =
//! 's3://bucket/key'`, `RESTORE … FROM URL = 's3://bucket/key'` (and
//! `VERIFYONLY` / `HEADERONLY FROM URL`), through the `object_store` crate.
//!
//! # How
//! A backup is written whole to a staging file under
//! `DATA_DIR/backup/staging/` first, checked as any backup (CHECKSUM reads
//! it back), then uploaded in parts of [`PART_BYTES`] (a multipart upload:
//! bounded memory whatever the size), and the staging file removed; the
//! object appears under its key only when the upload completes, so a
//! failed or killed backup leaves no object (an unfinished multipart upload
//! is aborted, or expires by the bucket's lifecycle rules). A restore
//! downloads the object to a staging file in chunks, then restores from it
//! as from a disk, and removes it.
//!
//! # Credentials and endpoint
//! From the node's environment, as the AWS tools read them:
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`,
//! `AWS_REGION` (default `us-east-1`), `AWS_ENDPOINT` for a store other
//! than AWS (MinIO, Ceph, …), `AWS_ALLOW_HTTP=true` for a plain-HTTP one.
//! Requests use the path style (`endpoint/bucket/key`).

use std::path::{Path, PathBuf};

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::{ObjectStore, WriteMultipart};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::error::{BackupError, Result};

/// Bytes per part of an upload (and at most twice that in memory).
pub const PART_BYTES: usize = 8 << 20;

/// An object named by a backup URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remote {
    /// The URL as written.
    pub url: String,
    /// The bucket.
    pub bucket: String,
    /// The key within it.
    pub key: String,
}

impl Remote {
    /// Parses `s3://bucket/key`.
    pub fn parse(url: &str) -> Result<Remote> {
        let bad = |why: &str| BackupError::BadUrl {
            url: url.to_string(),
            why: why.to_string(),
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| bad("only s3:// URLs are supported"))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| bad("it names no object: write s3://bucket/key"))?;
        if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
            return Err(bad("it names no object: write s3://bucket/key"));
        }
        Ok(Remote {
            url: url.to_string(),
            bucket: bucket.to_string(),
            key: key.to_string(),
        })
    }

    fn store(&self) -> Result<impl ObjectStore> {
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&self.bucket);
        if std::env::var_os("AWS_REGION").is_none()
            && std::env::var_os("AWS_DEFAULT_REGION").is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        builder.build().map_err(|e| self.error("reach", e))
    }

    fn error(&self, what: &'static str, e: object_store::Error) -> BackupError {
        match e {
            // Writing, "not found" is the bucket's.
            object_store::Error::NotFound { .. } if what == "upload to" => BackupError::Remote {
                what,
                url: self.url.clone(),
                why: format!("bucket \"{}\" does not exist", self.bucket),
            },
            object_store::Error::NotFound { .. } => BackupError::MissingObject {
                url: self.url.clone(),
            },
            e => BackupError::Remote {
                what,
                url: self.url.clone(),
                why: e.to_string(),
            },
        }
    }

    /// Uploads `file` as this object (multipart, [`PART_BYTES`] at a
    /// time); the object exists only once the whole file is there.
    pub async fn upload(&self, file: &Path) -> Result<u64> {
        let store = self.store()?;
        let key = object_store::path::Path::from(self.key.as_str());
        let io = |e: std::io::Error| BackupError::Io {
            what: "read the backup from",
            path: file.to_path_buf(),
            source: e,
        };
        let mut input = tokio::fs::File::open(file).await.map_err(io)?;
        let upload = store
            .put_multipart(&key)
            .await
            .map_err(|e| self.error("upload to", e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
        let mut buf = vec![0u8; 1 << 20];
        let mut sent = 0u64;
        loop {
            let n = match input.read(&mut buf).await {
                Ok(n) => n,
                Err(e) => {
                    let _ = writer.abort().await;
                    return Err(io(e));
                }
            };
            if n == 0 {
                break;
            }
            if let Err(e) = writer.wait_for_capacity(2).await {
                return Err(self.error("upload to", e));
            }
            writer.write(&buf[..n]);
            sent += n as u64;
        }
        writer
            .finish()
            .await
            .map_err(|e| self.error("upload to", e))?;
        Ok(sent)
    }

    /// Downloads this object into `file` (created), chunk by chunk.
    pub async fn download(&self, file: &Path) -> Result<u64> {
        let store = self.store()?;
        let key = object_store::path::Path::from(self.key.as_str());
        let got = store
            .get(&key)
            .await
            .map_err(|e| self.error("download from", e))?;
        let io = |e: std::io::Error| BackupError::Io {
            what: "write the download to",
            path: file.to_path_buf(),
            source: e,
        };
        let mut out = tokio::fs::File::create(file).await.map_err(io)?;
        let mut stream = got.into_stream();
        let mut received = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.error("download from", e))?;
            out.write_all(&chunk).await.map_err(io)?;
            received += chunk.len() as u64;
        }
        out.sync_all().await.map_err(io)?;
        Ok(received)
    }
}

/// Removes what transfers left under `DATA_DIR/backup/staging/` when the
/// node stopped mid-way (an upload, a download, a seed being sent or
/// taken): at start-up nothing there is in use.
pub fn clear_staging(data_dir: &Path) {
    let dir = data_dir.join("backup").join("staging");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return;
    };
    for entry in entries.flatten() {
        if let Err(e) = std::fs::remove_file(entry.path()) {
            tracing::warn!(path = %entry.path().display(), "cannot remove a staging file left by an earlier run: {e}");
        }
    }
}

/// A staging file under `data_dir` for one transfer; removed on drop.
pub struct Staging(PathBuf);

impl Staging {
    /// A new, unused staging path.
    pub fn new(data_dir: &Path) -> Result<Staging> {
        let dir = data_dir.join("backup").join("staging");
        crate::durable::create_dir_all(&dir).map_err(|source| BackupError::Io {
            what: "create",
            path: dir.clone(),
            source,
        })?;
        Ok(Staging(
            dir.join(format!("{}.bak", uuid::Uuid::new_v4().simple())),
        ))
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where a backup to `target` (a file's path, or a URL) is written: the
/// path itself, or for a URL a staging file under `data_dir` and the
/// object to upload it to ([`super::BackupRequest::upload`]).
pub fn destination(
    data_dir: &Path,
    target: &str,
) -> Result<(PathBuf, Option<Staging>, Option<Remote>)> {
    if !is_url(target) {
        return Ok((PathBuf::from(target), None, None));
    }
    let remote = Remote::parse(target)?;
    let staging = Staging::new(data_dir)?;
    Ok((staging.path().to_path_buf(), Some(staging), Some(remote)))
}

/// The local file a backup named by `path` (a file's path, or a URL) is
/// read from: the path itself, or for a URL a staging copy under
/// `data_dir`, downloaded first and removed when the guard drops.
pub async fn fetch(data_dir: &Path, path: &str) -> Result<(PathBuf, Option<Staging>)> {
    if !is_url(path) {
        return Ok((PathBuf::from(path), None));
    }
    let remote = Remote::parse(path)?;
    let staging = Staging::new(data_dir)?;
    remote.download(staging.path()).await?;
    Ok((staging.path().to_path_buf(), Some(staging)))
}

/// Whether `path` (as a backup's history records it) is a URL.
pub fn is_url(path: &str) -> bool {
    path.contains("://")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backup_urls_name_a_bucket_and_a_key() {
        let r = Remote::parse("s3://backups/app/full-1.bak").unwrap();
        assert_eq!(
            (r.bucket.as_str(), r.key.as_str()),
            ("backups", "app/full-1.bak")
        );
        for (bad, says) in [
            ("https://example.com/a.bak", "only s3://"),
            ("s3://backups", "names no object"),
            ("s3://backups/", "names no object"),
            ("s3:///a.bak", "names no object"),
            ("s3://b/dir/", "names no object"),
        ] {
            let e = Remote::parse(bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
